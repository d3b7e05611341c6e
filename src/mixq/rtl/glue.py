"""Verilog glue of the whole-network accelerator (:mod:`mixq.rtl.network`): parameterised modules.

Every module is plain Verilog-2005 (Icarus ``-g2005`` and Verilator read it as it is); the
network top instantiates them with parameters, one set per layer. A *pixel word* is the
``C`` codes of one pixel, channel ``c`` at bits ``[c*B +: B]`` (LSB first, two's complement
of the code width ``B`` for signed formats), the layout of every frame buffer.

``mixq_pingpong``   bank bookkeeping of a frame buffer of ``K`` banks (two: ping-pong; more where frames
                    wait longer, :mod:`mixq.rtl.frames`): the producer writes bank ``p_bank`` and
                    commits it at the end of a frame, the consumer reads bank ``c_bank`` and releases
                    it, both in turn round the ``K``; ``can_write`` / ``can_read`` say a bank is free /
                    full. A commit and a release in the same cycle leave the fill unchanged.
``mixq_fbuf``       the ``K`` banks (``K*N`` pixel words), one write port, ``RP`` read ports (a copy of the
                    memory each; ``RP`` > 1 for a window reading its rows in parallel) with a
                    registered read (data the cycle after the address; a block RAM's timing).
``mixq_rowbuf``     a ring of ``R`` rows of ``W`` pixel words (the line buffer between two layer
                    stages): writes in raster order round the ring; ``can_write`` while a row
                    is reserved or one can be (``AUTO``: the input stream reserves a row with
                    its first pixel); ``avail`` rows are in and not released; a read address is
                    (row - the reader's lowest kept row) * ``W`` + column; ``RP`` read ports as ``mixq_fbuf``.
``mixq_walk``      the read walk both window sequencers share: output pixel after output pixel, its
                    window taps in order, one read per ``issue`` (address, padding flag and tap the
                    cycle after), with the row gate below; with ``RS`` > 0 a window after the first of
                    its output row reads only its last ``RS`` columns (``KH*RS`` taps); with ``RP`` = ``KH``
                    a read is a window column, its ``KH`` rows on ``KH`` read ports.
``mixq_rowgate``    the row-level flow control of a window sequencer on rings: output row ``gy``
                    starts once its input rows are in (``RIN``) and, where it begins a row of
                    the output ring (``ROUT``, every ``PK``-th row with a pool), a row is
                    reserved; its last read releases the input rows no later row needs.
``mixq_axis_in``    AXI4-Stream slave: one pixel word per beat into the input frame buffer;
                    ``s_tready`` is high while a bank is free (it never depends on ``s_tvalid``);
                    the frame is ``N`` beats (``s_tlast`` is accepted and not needed).
``mixq_window``     the sliding-window sequencer of one layer engine: per output pixel it reads
                    the ``KH*KW`` input pixels of the window (zeros where it falls on the padding)
                    into a shift register, one read per cycle and window after window, so the
                    window is the engine's input vector in (ky, kx, channel) order; a finished
                    window waits in ``nxt`` (the last read of the next one waits while it
                    does), is taken into the copy register once the engine has taken the
                    previous vector, copied into the engine's write bank one word (``simd``
                    codes) per cycle, and ``start`` is raised with the last word and held
                    until the engine's ``ready``. The engine's input buffer has two banks
                    (:mod:`mixq.rtl.layer`, ``banks=2``), so the copy overlaps the previous
                    vector's computation and the engine takes vectors back to back: a pixel
                    costs ``max(tiles*fold, KH*KW, 3)`` cycles. Where the reads are the slower part
                    and the stride is a whole number ``RS`` of dilations below ``KW``, the window
                    keeps its columns (``RS`` > 0): each read is written at its tap, and with a
                    window's last read each row's taps move ``RS`` columns left, so the next window
                    of the row reads ``KH*RS`` pixels (:mod:`mixq.hw.window`). Where the reads still bind,
                    ``RP`` = ``KH`` reads the window's rows in parallel, a column (``KH`` pixels, one
                    per read port of the buffer) a cycle, written at their taps: ``KW`` reads a
                    window, ``RS`` where it keeps columns. A linear layer after a flatten
                    is a window covering the whole map. A depthwise layer (``DWC`` channels) takes
                    its vector channel by channel (``FOLD`` words each, the channel's ``KH*KW``
                    window codes), so its copy is ``DWC*FOLD`` cycles.
``mixq_window_stream``  the window sequencer where a pixel word is a whole number of engine words
                    (``simd`` divides the channels): each window pixel read goes straight into the
                    engine's write bank (``PW / LW`` words), one read every ``PW / LW`` cycles, so no
                    window is held in registers; ``start`` rises with the window's last write and the
                    next window's reads go in the cycle the engine takes it (their data land two
                    cycles on, in the other bank): a pixel costs ``max(tiles*fold, fold + 1)`` cycles.
``mixq_axis_out``   AXI4-Stream master: the output frame buffer, one code per beat (pixel by
                    pixel, channel by channel), sign-extended to the bus, ``m_tlast`` on the
                    frame's last code; holds ``m_tdata`` / ``m_tvalid`` while ``m_tready`` is low.
                    Pixel words are read ahead into a queue of four, so a frame is one beat per
                    code at full ``tready`` (it was ``codes + 3`` beats per pixel: each word was
                    fetched after the previous pixel's codes).

Pointwise stages (residual adds, requantizers between stages) are generated per stage by
:mod:`mixq.rtl.pointwise`.
"""

from __future__ import annotations


def _window_head(name: str, params: str, in_width: str, ports: str, start: str = "output reg start") -> str:
    """The Verilog module header both window sequencers (``mixq_window``, ``mixq_window_stream``) share: the
    walk's parameters, the frame and ring handshakes and the engine's write port, with ``params`` (extra
    parameters), ``in_width`` (the ``in_data`` width), ``ports`` (extra ports) and ``start`` (its declaration) of
    the one named."""
    return (f"module {name} #(\n"
            "  parameter IH = 1, IW = 1, PW = 8, KH = 1, KW = 1, SH = 1, SW = 1, PH = 0, PL = 0, DH = 1, DW = 1,\n"
            "  parameter RIN = 0, ROUT = 0, PK = 1, PHO = 1, RS = 0, RP = 1,\n"
            f"  parameter OH = 1, OW = 1, FOLD = 1, LW = 8, AW = 1, IA = 1{params}\n"
            ") (\n"
            "  input clk, input rst,\n"
            "  input can_read, input can_write, input done,\n"
            "  output reg frame_end,\n"
            "  output [RP*AW-1:0] raddr, input [RP*PW-1:0] rdata,\n"
            "  input [7:0] avail, output [7:0] rel_n, input can_reserve, output reserve,\n"
            f"  output in_we, output [IA-1:0] in_addr, output [{in_width}-1:0] in_data, {start}, "
            f"input ready{ports}\n"
            ");\n")


# the read walk (``mixq_walk``) of both window sequencers, with the signals it drives and its frame start
_WINDOW_WALK = r"""  wire g_on, gate_ok, row_first, lastread; wire [RP-1:0] pad1; wire [NB-1:0] nissue, tap1;
  wire begin_ = !active && !frame_end && can_read && can_write;  // a frame starts: input in, output free
  mixq_walk #(.IH(IH), .IW(IW), .KH(KH), .KW(KW), .SH(SH), .SW(SW), .PH(PH), .PL(PL), .DH(DH), .DW(DW), .OH(OH),
              .OW(OW), .RIN(RIN), .ROUT(ROUT), .PK(PK), .PHO(PHO), .RS(RS), .RP(RP), .NB(NB), .AW(AW))
    walk (.clk(clk), .rst(rst), .begin_(begin_), .issue(issue), .avail(avail), .can_reserve(can_reserve),
          .rel_n(rel_n), .reserve(reserve), .g_on(g_on), .nissue(nissue), .last(lastread), .first(row_first),
          .ok(gate_ok), .raddr(raddr), .pad(pad1), .tap(tap1));
"""

GLUE_VERILOG = (r"""// mixq whole-network glue (generated by mixq.rtl.glue; see its docstring)
module mixq_pingpong #(parameter K = 2, KB = 1) (
  input clk, input rst, input p_commit, input c_release,
  output reg [KB-1:0] p_bank, output reg [KB-1:0] c_bank, output can_write, output can_read
);
  // K banks in a ring: the producer fills them in turn, the consumer empties them in the same order
  reg [KB:0] full;
  always @(posedge clk) begin
    if (rst) begin full <= 0; p_bank <= 0; c_bank <= 0; end
    else begin
      if (p_commit) p_bank <= (p_bank == K - 1) ? 0 : p_bank + 1'b1;
      if (c_release) c_bank <= (c_bank == K - 1) ? 0 : c_bank + 1'b1;
      if (p_commit && !c_release) full <= full + 1'b1;
      else if (c_release && !p_commit) full <= full - 1'b1;
    end
  end
  assign can_write = full != K;
  assign can_read = full != 0;
endmodule

module mixq_fbuf #(parameter PW = 8, N = 1, AW = 1, K = 2, KB = 1, RP = 1) (
  input clk, input [KB-1:0] wbank, input [(PW+7)/8-1:0] wbe, input [AW-1:0] waddr, input [PW-1:0] wdata,
  input re, input [KB-1:0] rbank, input [RP*AW-1:0] raddr, output [RP*PW-1:0] rdata
);
  // reads when `re` (the output holds otherwise: the block RAM's enable); byte-enabled writes (a collector
  // writes a pixel in byte-aligned groups, mixq.rtl.assemble); bank b holds words b*N .. b*N + N - 1;
  // RP read ports (a window reading its rows in parallel), a copy of the memory each
  localparam NBE = (PW + 7) / 8;
  reg [NBE*8-1:0] mem [0:K*N-1];
  wire [NBE*8-1:0] wd = wdata;
  integer wa;
  always @(*) wa = wbank * N + waddr;
  genvar j;
  generate for (j = 0; j < NBE; j = j + 1) begin : byte_
    always @(posedge clk) if (wbe[j]) mem[wa][j*8 +: 8] <= wd[j*8 +: 8];
  end endgenerate
  generate for (j = 0; j < RP; j = j + 1) begin : port
    wire [31:0] ra = rbank * N + raddr[j*AW +: AW];
    reg [NBE*8-1:0] q;
    always @(posedge clk) if (re) q <= mem[ra];
    assign rdata[j*PW +: PW] = q[PW-1:0];
  end endgenerate
endmodule

module mixq_rowbuf #(parameter PW = 8, W = 1, R = 2, AW = 1, AUTO = 0, RP = 1) (
  input clk, input rst,
  input reserve, input we, input [(PW+7)/8-1:0] wbe, input [PW-1:0] wdata, output can_write,
  input [7:0] rel_n, output [7:0] avail,
  input re, input [RP*AW-1:0] raddr, output [RP*PW-1:0] rdata
);
  // R rows of W pixel words in a ring: writes in raster order (wa counts them round the ring), reads at
  // `raddr` = (row - the consumer's lowest kept row) * W + column, offset by the ring position of that row
  // byte-enabled writes at the pixel in progress (`wbe`); `we` ends the pixel; RP read ports (a window reading
  // its rows in parallel), a copy of the memory each
  localparam NBE = (PW + 7) / 8;
  reg [NBE*8-1:0] mem [0:R*W-1];
  wire [NBE*8-1:0] wd = wdata;
  reg [AW-1:0] wa, rbase;
  reg [7:0] used, filled;
  reg [AW:0] wx;
  wire res = AUTO ? (we && wx == 0) : reserve;
  wire commit = we && (wx == W - 1);
  assign can_write = AUTO ? (wx != 0 || used < R) : ({1'b0, used} + reserve < R);
  assign avail = filled - rel_n;
  integer nb, i;
  genvar j;
  generate for (j = 0; j < NBE; j = j + 1) begin : byte_
    always @(posedge clk) if (wbe[j]) mem[wa][j*8 +: 8] <= wd[j*8 +: 8];
  end endgenerate
  generate for (j = 0; j < RP; j = j + 1) begin : port
    wire [31:0] pr = rbase + raddr[j*AW +: AW];
    wire [31:0] pa = (pr >= R * W) ? pr - R * W : pr;
    reg [NBE*8-1:0] q;
    always @(posedge clk) if (re) q <= mem[pa];  // the output holds without `re` (the block RAM's enable)
    assign rdata[j*PW +: PW] = q[PW-1:0];
  end endgenerate
  always @(*) begin
    nb = rbase;  // the ring position of the reader's lowest kept row moves W words per released row
    for (i = 0; i < R; i = i + 1) if (i < rel_n) nb = nb + W;
    if (nb >= R * W) nb = nb - R * W;
  end
  always @(posedge clk) begin
    if (rst) begin wa <= 0; wx <= 0; used <= 0; filled <= 0; rbase <= 0; end
    else begin
      if (we) begin wa <= (wa == R * W - 1) ? 0 : wa + 1'b1; wx <= (wx == W - 1) ? 0 : wx + 1'b1; end
      used <= used + res - rel_n;
      filled <= filled + commit - rel_n;
      rbase <= nb;
    end
  end
endmodule

module mixq_rowgate #(
  parameter IH = 1, SH = 1, PH = 0, KH = 1, OH = 1, RIN = 0, ROUT = 0, PK = 1, PHO = 1, NB = 8
) (
  input clk, input rst,
  input first, input [NB-1:0] gy, input go, input row_end,
  input [7:0] avail, input can_reserve,
  output ok, output reg reserve, output reg [7:0] rel_n, output reg [NB-1:0] lo
);
  // row-level flow control of a window sequencer on ring buffers (mixq_rowbuf): output row gy may start
  // (`first`: its first read is next) once the input rows it needs are in (RIN) and, where it starts a new
  // row of the output buffer (ROUT; with a PK x PK pool, every PK-th row), one is reserved there; with the
  // row's last read (`row_end`) the input rows no later output row needs are released
  integer hi, nl;
  always @(*) begin
    hi = gy * SH - PH + KH - 1;
    if (hi > IH - 1 || gy == OH - 1) hi = IH - 1;  // the last row waits for every row: the frame's rest is released
    nl = (gy + 1) * SH - PH;
    if (nl < 0) nl = 0;
    if (nl > IH || gy == OH - 1) nl = IH;
    if (nl - 1 > hi) hi = nl - 1;  // a stride past the window (1 x 1, stride 2): the rows it skips are in first
  end
  wire in_ok = (RIN == 0) || (hi - lo + 1 <= avail);
  wire new_out = (ROUT != 0) && (gy % PK == 0) && (gy / PK < PHO);
  assign ok = !first || (in_ok && (!new_out || can_reserve));
  always @(posedge clk) begin
    reserve <= 1'b0; rel_n <= 8'd0;
    if (rst) lo <= 0;
    else begin
      if (go && new_out) reserve <= 1'b1;
      if (row_end && RIN != 0) begin rel_n <= nl - lo; lo <= (gy == OH - 1) ? 0 : nl; end
    end
  end
endmodule

module mixq_axis_in #(parameter DW = 8, PW = 8, N = 1, AW = 1) (
  input clk, input rst,
  input [DW-1:0] s_tdata, input s_tvalid, output s_tready, input s_tlast,
  input can_write, output we, output [AW-1:0] waddr, output [PW-1:0] wdata, output commit
);
  reg [AW-1:0] cnt;
  assign s_tready = can_write && !rst;
  assign we = s_tvalid && s_tready;
  assign waddr = cnt;
  assign wdata = s_tdata[PW-1:0];
  assign commit = we && (cnt == N - 1);
  always @(posedge clk) begin
    if (rst) cnt <= 0;
    else if (we) cnt <= (cnt == N - 1) ? 0 : cnt + 1'b1;
  end
endmodule

module mixq_walk #(
  parameter IH = 1, IW = 1, KH = 1, KW = 1, SH = 1, SW = 1, PH = 0, PL = 0, DH = 1, DW = 1,
  parameter OH = 1, OW = 1, RIN = 0, ROUT = 0, PK = 1, PHO = 1, RS = 0, RP = 1, NB = 8, AW = 1
) (
  input clk, input rst, input begin_, input issue,
  input [7:0] avail, input can_reserve, output [7:0] rel_n, output reserve,
  output reg g_on, output reg [NB-1:0] nissue, output last, output first, output ok,
  output [RP*AW-1:0] raddr, output [RP-1:0] pad, output reg [NB-1:0] tap
);
  // the read walk of a window sequencer: output pixel after output pixel, its KH x KW taps in order (a read
  // `issue`d by the sequencer); `raddr` / `pad` the cycle after the read (a ring buffer: rows from its lowest
  // kept row); `ok`: the row gate lets this read go (mixq_rowgate); `tap` the read's window position ky*KW + kx.
  // RS > 0: a window after the first of its output row keeps the one before's columns but its first RS, moved RS
  // to the left (the sequencer moves them), and reads only its last RS columns (KH*RS taps).
  // RP = KH: a read is a window column, its KH rows at once (port r: row ky + r, `pad` bit r; `tap` its column)
  localparam NR = (RP > 1) ? 1 : KH;  // rows walked one after the other
  reg [NB-1:0] gy, gx, ky, kx;
  wire keeps = (RS != 0) && (gx != 0);  // this window keeps columns of the one before
  wire [NB-1:0] nk = keeps ? NR * RS : NR * KW;  // its reads
  wire [NB-1:0] kx0 = keeps ? KW - RS : 0;  // its first column read
  integer iy, ix;
  always @(*) begin
    iy = gy * SH - PH + ky * DH;
    ix = gx * SW - PL + kx * DW;
  end
  assign last = nissue == nk - 1;
  assign first = nissue == 0 && gx == 0;
  wire [NB-1:0] lo;
  mixq_rowgate #(.IH(IH), .SH(SH), .PH(PH), .KH((KH - 1) * DH + 1), .OH(OH), .RIN(RIN), .ROUT(ROUT), .PK(PK),
                 .PHO(PHO), .NB(NB))
    gate (.clk(clk), .rst(rst), .first(first), .gy(gy), .go(issue && first), .row_end(issue && last && gx == OW - 1),
          .avail(avail), .can_reserve(can_reserve), .ok(ok), .reserve(reserve), .rel_n(rel_n), .lo(lo));
  genvar r;
  generate for (r = 0; r < RP; r = r + 1) begin : g_port
    wire [31:0] yr = iy + r * DH;
    wire [31:0] rowaddr = RIN ? (yr - lo) * IW + ix : yr * IW + ix;
    reg [AW-1:0] ra; reg pd;
    always @(posedge clk) begin
      if (rst) pd <= 0;
      else if (issue) begin
        ra <= rowaddr[AW-1:0]; pd <= ($signed(yr) < 0) || ($signed(yr) >= IH) || (ix < 0) || (ix >= IW);
      end
    end
    assign raddr[r*AW +: AW] = ra; assign pad[r] = pd;
  end endgenerate
  always @(posedge clk) begin
    if (rst) begin g_on <= 0; nissue <= 0; gy <= 0; gx <= 0; ky <= 0; kx <= 0; end
    else begin
      if (begin_) begin g_on <= 1; gy <= 0; gx <= 0; ky <= 0; kx <= 0; nissue <= 0; end
      if (issue) begin
        tap <= ky * KW + kx;
        if (last) begin
          nissue <= 0; ky <= 0; kx <= (RS != 0 && gx != OW - 1) ? KW - RS : 0;
          if (gx == OW - 1) begin
            gx <= 0;
            if (gy == OH - 1) begin gy <= 0; g_on <= 0; end else gy <= gy + 1'b1;
          end else gx <= gx + 1'b1;
        end else begin
          nissue <= nissue + 1'b1;
          if (kx == KW - 1) begin kx <= kx0; ky <= ky + 1'b1; end else kx <= kx + 1'b1;
        end
      end
    end
  end
endmodule

"""
    + _window_head("mixq_window", ", DWC = 0, B = 8, SIMD = 1, WPC = 1, GC = 1", "WPC*LW", "")
    + r"""  localparam K = KH * KW;
  localparam WW = K * PW;
  localparam VW = FOLD * LW;
  localparam NG = (DWC > 0) ? DWC / GC : 1;  // groups of a grouped layer (depthwise: GC = 1, a group per channel)
  localparam NW = NG * FOLD;  // words copied per vector (grouped: FOLD per group)
  localparam XW = (DWC > 0) ? WW : VW;
  localparam NC = (NW + WPC - 1) / WPC;  // copy cycles: WPC words each (depthwise, FOLD = 1: WPC channels)
  reg active, full, copying;
  localparam M1 = (OH > OW ? OH : OW) > K ? (OH > OW ? OH : OW) : K;
  localparam M2 = (NC > FOLD ? NC : FOLD) > DWC ? (NC > FOLD ? NC : FOLD) : DWC;
  localparam NB = $clog2((M1 > M2 ? M1 : M2) + 1) + 1;  // counters: wide enough for every count they hold
  reg [NB-1:0] s, cf, cg;
  reg p1, p2, e1, e2; reg [RP-1:0] pad2;
  reg [NB-1:0] tap2;
  reg [WW-1:0] sh, nxt;
  reg [XW-1:0] win;
  wire [RP*PW-1:0] pixs;  // the pixel of each row read (zeros on the padding)
  genvar pr;
  generate for (pr = 0; pr < RP; pr = pr + 1) begin : g_pix
    assign pixs[pr*PW +: PW] = pad2[pr] ? {PW{1'b0}} : rdata[pr*PW +: PW];
  end endgenerate
  wire [PW-1:0] pix = pixs[PW-1:0];
  wire [WW-1:0] shifted;  // the window with the pixel arriving now (a window's last read is its last tap, K-1)
  generate
    if (K == 1) begin : g_one
      assign shifted = pix;
    end else if (RP > 1) begin : g_cols  // a window column a read: row ky's pixel to tap ky*KW + kx; with RS > 0
      genvar t;                          // a window's last read moves each row's columns as g_keep does
      for (t = 0; t < K; t = t + 1) begin : g_tap
        wire [PW-1:0] px = pixs[(t / KW)*PW +: PW];
        if (RS != 0 && t % KW + RS < KW) begin : g_move
          wire [PW-1:0] moved = (t % KW + RS == KW - 1) ? px : sh[(t+RS)*PW +: PW];
          always @(posedge clk) if (p2 && (e2 || tap2 == t % KW)) sh[t*PW +: PW] <= e2 ? moved : px;
        end else begin : g_new
          always @(posedge clk) if (p2 && tap2 == t % KW) sh[t*PW +: PW] <= px;
        end
        assign shifted[t*PW +: PW] = (t % KW == KW - 1) ? px : sh[t*PW +: PW];
      end
    end else if (RS == 0) begin : g_many  // the taps come in order: a shift register
      assign shifted = {pix, sh[WW-1:PW]};
      always @(posedge clk) if (p2) sh <= shifted;
    end else begin : g_keep  // each read written at its tap; with a window's last read each row's columns but
      genvar t;              // the last RS move RS to the left (the next window's), the last tap's from `pix`
      for (t = 0; t < K; t = t + 1) begin : g_tap
        if (t % KW + RS < KW) begin : g_move
          wire [PW-1:0] moved = (t + RS == K - 1) ? pix : sh[(t+RS)*PW +: PW];
          always @(posedge clk) if (p2 && (e2 || tap2 == t)) sh[t*PW +: PW] <= e2 ? moved : pix;
        end else begin : g_new
          always @(posedge clk) if (p2 && tap2 == t) sh[t*PW +: PW] <= pix;
        end
      end
      assign shifted = {pix, sh[WW-PW-1:0]};
    end
  endgenerate
  // take the gathered window into the copy register: the engine took the previous one (or will this cycle)
  wire take = full && (!copying || s == NC - 1) && (!start || ready);
  // a window's last read: its data completes the window two cycles later, when `nxt` must be free
  wire issue = g_on && gate_ok && (!lastread || ((!full || take) && !e1 && !e2));
"""
    + _WINDOW_WALK
    + r"""
  // copy: one word per cycle into the engine's write bank
  assign in_we = copying;
  wire [15:0] wbase = s * WPC;
  assign in_addr = wbase[IA-1:0];
  generate
    if (DWC == 0) begin : g_dense  // the copy register shifts one word a cycle (no word multiplexer)
      assign in_data = win[LW-1:0];
    end else begin : g_dw  // channel cg's window positions cf*SIMD .. cf*SIMD + SIMD - 1, zeros past KH*KW;
      genvar li, wi;     // with WPC > 1, word wi of a copy cycle is word s*WPC + wi: channel w / FOLD, chunk w % FOLD
      for (wi = 0; wi < WPC; wi = wi + 1) begin : g_word
        wire [15:0] w = s * WPC + wi;
        for (li = 0; li < SIMD; li = li + 1) begin : g_lane
          wire [15:0] pp = (WPC == 1 ? cf : w % FOLD) * SIMD + li;  // position in the group's vector: (tap, c)
          wire [15:0] ch = (WPC == 1) ? cg : w / FOLD;  // the group
          wire [15:0] cin = ch * GC + pp % GC;  // its input channel
          assign in_data[wi * LW + li * B +: B] = (pp < K * GC && ch < NG) ? win[((pp / GC) * DWC + cin) * B +: B]
                                                                            : {B{1'b0}};
        end
      end
    end
  endgenerate
  always @(posedge clk) begin
    frame_end <= 1'b0;
    if (rst) begin
      active <= 0; full <= 0; copying <= 0; start <= 0;
      p1 <= 0; p2 <= 0; pad2 <= 0; e1 <= 0; e2 <= 0; s <= 0;
    end else begin
      if (start && ready) start <= 1'b0;
      if (begin_) active <= 1;
      // gather: one read per cycle, window after window (data two cycles after the address)
      p1 <= issue; e1 <= issue && lastread;
      p2 <= p1; pad2 <= pad1; e2 <= e1; tap2 <= tap1;
      // feed: copy the window (FOLD cycles), `start` with its last word; the engine takes it when ready
      if (copying) begin
        if (DWC == 0 && NC > 1) win <= win >> LW;
        if (s == NC - 1) copying <= 0;
        if (NC >= 2 && s == NC - 2) start <= 1'b1;
        s <= s + 1'b1;
        if (cf == FOLD - 1) begin cf <= 0; cg <= cg + 1'b1; end else cf <= cf + 1'b1;
      end
      if (take) begin
        win <= nxt; full <= 0; copying <= 1; s <= 0; cf <= 0; cg <= 0;
        if (NC == 1) start <= 1'b1;
      end
      if (p2 && e2) begin nxt <= shifted; full <= 1; end
      if (active && done) begin active <= 0; frame_end <= 1'b1; end
    end
  end
endmodule

"""
    + _window_head("mixq_window_stream", "", "LW", ", output re", "output start")
    + r"""  // a window's pixels go straight into the engine's write bank: pixel word k of the window is engine words
  // k*R .. k*R+R-1 (R = PW / LW); one read every R cycles, data two cycles after the address. `start` rises with
  // the window's last write (the engine reads its input from the cycle after it takes a vector), and the next
  // window's first read goes in the cycle the engine takes this one: its writes, two cycles on, land in the
  // other bank. The buffer reads only when told (`re`, the cycle its address is valid), so its output holds the
  // pixel for the R cycles its words are written: no pixel register, an R:1 word multiplexer on the buffer's output
  localparam K = KH * KW;
  localparam R = PW / LW;
  reg active, start_r;
  reg [1:0] pend;  // windows whose reads are all issued and that the engine has not taken
  localparam M1 = (OH > OW ? OH : OW) > K ? (OH > OW ? OH : OW) : K;
  localparam NB = $clog2((M1 > FOLD ? M1 : FOLD) + 1) + 1;  // counters: wide enough for every count they hold
  reg [NB-1:0] cnt, r;
  reg p1, p2, pad2, e1, e2;
  reg [NB-1:0] t1, t2; reg [NB+15:0] base;
  reg emit, last_emit;
  wire [PW-1:0] pix = pad2 ? {PW{1'b0}} : rdata;
  wire last_write = (R == 1) ? (p2 && e2) : (emit && r == R - 1 && last_emit);
  assign start = start_r || last_write;
  wire take = start && ready;
  wire issue = g_on && gate_ok && cnt == 0 && (pend == 0 || (pend == 1 && take));
"""
    + _WINDOW_WALK
    + r"""
  // a pixel's first word is written as its data arrive, the others from the held buffer output in the next R - 1
  // cycles
  assign in_we = p2 || emit;
  assign in_addr = p2 ? t2 * R : base + r;
  assign in_data = p2 ? pix[LW-1:0] : pix[r * LW +: LW];
  assign re = p1;
  always @(posedge clk) begin
    frame_end <= 1'b0;
    if (rst) begin
      active <= 0; pend <= 0; start_r <= 0; p1 <= 0; p2 <= 0; e1 <= 0; e2 <= 0; emit <= 0;
      cnt <= 0; r <= 0; last_emit <= 0;
    end else begin
      pend <= pend + (issue && lastread) - take;
      if (take) start_r <= 1'b0;
      else if (last_write) start_r <= 1'b1;  // the engine is busy: hold `start` until it takes the window
      if (begin_) begin active <= 1; cnt <= 0; end
      p1 <= issue; e1 <= issue && lastread;
      if (g_on && cnt != 0) cnt <= cnt - 1'b1;
      if (issue) begin t1 <= nissue; cnt <= R - 1; end
      p2 <= p1; pad2 <= pad1; e2 <= e1; t2 <= t1;
      if (emit) begin
        if (r == R - 1) emit <= 1'b0;
        r <= r + 1'b1;
      end
      if (p2) begin
        if (R != 1) begin emit <= 1'b1; r <= 1; base <= t2 * R; last_emit <= e2; end
      end
      if (active && done) begin active <= 0; frame_end <= 1'b1; end
    end
  end
endmodule

module mixq_axis_out #(parameter ROWS = 1, OB = 8, DW = 8, NPIX = 1, AW = 1) (
  input clk, input rst, input can_read, output reg release_,
  output [AW-1:0] raddr, input [ROWS*OB-1:0] rdata,
  output reg [DW-1:0] m_tdata, output reg m_tvalid, output reg m_tlast, input m_tready
);
  // pixel words are read ahead into a queue of four (the buffer's read: data the cycle after the address), so
  // the codes go out one a beat with no gap between pixels; the bank is released once its last word is read
  reg [ROWS*OB-1:0] q [0:3];
  reg [ROWS*OB-1:0] cur;  // the pixel going out: it shifts one code a beat (no code multiplexer)
  reg [2:0] cnt;
  reg [1:0] qh, qt;
  reg [15:0] ch, rpix, opix;
  reg have, v1;
  assign raddr = rpix[AW-1:0];
  wire signed [OB-1:0] el = cur[OB-1:0];
  wire emit = have && (!m_tvalid || m_tready);
  wire lastc = ch == ROWS - 1;
  wire pop = (!have || (emit && lastc)) && cnt != 0;
  wire issue = can_read && !release_ && ({1'b0, cnt} + v1 < 3);
  always @(posedge clk) begin
    release_ <= 1'b0;
    if (rst) begin
      m_tvalid <= 0; m_tlast <= 0; have <= 0; v1 <= 0; cnt <= 0; qh <= 0; qt <= 0; ch <= 0; rpix <= 0; opix <= 0;
    end else begin
      v1 <= issue;
      if (issue) begin
        if (rpix == NPIX - 1) begin rpix <= 0; release_ <= 1'b1; end else rpix <= rpix + 1'b1;
      end
      if (v1) begin q[qt] <= rdata; qt <= qt + 1'b1; end
      cnt <= cnt + v1 - pop;
      if (m_tvalid && m_tready) m_tvalid <= 1'b0;
      if (emit) begin
        m_tdata <= el; m_tvalid <= 1'b1;
        m_tlast <= (opix == NPIX - 1) && lastc;
        cur <= cur >> OB;
        if (lastc) begin
          ch <= 0; have <= 0;
          opix <= (opix == NPIX - 1) ? 0 : opix + 1'b1;
        end else ch <= ch + 1'b1;
      end
      if (pop) begin cur <= q[qh]; qh <= qh + 1'b1; have <= 1'b1; end
    end
  end
endmodule
""")
