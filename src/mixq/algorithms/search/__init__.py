"""Hardware-aware mixed-precision / mixed-scheme search (issue 8)."""
