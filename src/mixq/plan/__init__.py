"""`QuantPlan` — the plan every stage shares — and its JSON form."""

from mixq.plan.build import uniform_plan
from mixq.plan.jsonio import load_plan, plan_from_dict, plan_to_dict, save_plan
from mixq.plan.plan import SCHEMA_VERSION, HwMapping, LayerPlan, QuantPlan, validate_plan

__all__ = [
    "SCHEMA_VERSION", "HwMapping", "LayerPlan", "QuantPlan",
    "load_plan", "plan_from_dict", "plan_to_dict", "save_plan", "uniform_plan", "validate_plan",
]
