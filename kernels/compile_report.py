"""Compile every kernel variant and autotune config for a GPU target WITHOUT a GPU, and report resources.

For each (kernel, variant, config): registers, spill bytes, shared memory (from the cubin via the
cuobjdump that ships with triton), and the PTX's global-load widths (16-byte `ld.global.v4` vs 2-byte
scalar loads). Integer sizes are compiled as divisible by 16, as Triton specializes them at launch for
real model dims (4096, 11008, ...); other sizes run un-vectorized. Runs on CPU; needs TRITON_INTERPRET
unset. Usage: `cd /tmp && python -m actsparse.kernels.compile_report [--arch 90] [--quick]`.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL_ARGS = {
    "gate_kernel": dict(x_ptr="*{dt}", wg_ptr="*{dt}", bg_ptr="*{dt}", gact_ptr="*fp32", counts_ptr="*i32",
                        idx_ptr="*i32", wu_ptr="*{dt}", bu_ptr="*{dt}", x1c_ptr="*fp32", n_tokens="i32",
                        d_model="i32", d_ff="i32", threshold="fp32"),
    "up_kernel": dict(x_ptr="*{dt}", wu_ptr="*{dt}", bu_ptr="*{dt}", wg_ptr="*{dt}", bg_ptr="*{dt}", gact_ptr="*fp32",
                      mask_ptr="*u8", counts_ptr="*i32", idx_ptr="*i32", x1c_ptr="*fp32", n_tokens="i32",
                      d_model="i32", d_ff="i32", threshold="fp32", n_given="i32"),
    "down_kernel": dict(x1c_ptr="*fp32", wdt_ptr="*{dt}", bd_ptr="*{dt}", counts_ptr="*i32", idx_ptr="*i32",
                        partial_ptr="*fp32", tickets_ptr="*i32", out_ptr="*{dt}", done_ptr="*i32", n_tokens="i32",
                        d_model="i32", d_ff="i32", n_given="i32"),
    "rows_ffn_kernel": dict(x_ptr="*{dt}", wg_ptr="*{dt}", bg_ptr="*{dt}", wu_ptr="*{dt}", bu_ptr="*{dt}",
                            wdt_ptr="*{dt}", bd_ptr="*{dt}", gact_ptr="*fp32", counts_ptr="*i32", idx_ptr="*i32",
                            acc_ptr="*fp32", ticket_ptr="*i32", out_ptr="*{dt}", d_model="i32", d_ff="i32",
                            threshold="fp32", n_given="i32"),
    "gate_rows_kernel": dict(x_ptr="*{dt}", wg_ptr="*{dt}", bg_ptr="*{dt}", wu_ptr="*{dt}", bu_ptr="*{dt}",
                             wdt_ptr="*{dt}", bd_ptr="*{dt}", acc_ptr="*fp32", ticket_ptr="*i32", out_ptr="*{dt}",
                             d_model="i32", d_ff="i32", threshold="fp32"),
    "compact_up_kernel": dict(x_ptr="*{dt}", wg_ptr="*{dt}", bg_ptr="*{dt}", wu_ptr="*{dt}", bu_ptr="*{dt}",
                              mask_ptr="*u8", counts_ptr="*i32", idx_ptr="*i32", x1c_ptr="*fp32", d_model="i32",
                              d_ff="i32", threshold="fp32"),
    "compact_kernel": dict(mask_ptr="*u8", counts_ptr="*i32", idx_ptr="*i32", n_rows="i32", d_ff="i32"),
    "pred_up_kernel": dict(x_ptr="*{dt}", wg_ptr="*{dt}", bg_ptr="*{dt}", wu_ptr="*{dt}", bu_ptr="*{dt}",
                           mask_ptr="*u8", idx_ptr="*i32", x1_ptr="*fp32", n_tokens="i32", n_pos="i32",
                           d_model="i32", d_ff="i32", threshold="fp32"),
    "pred_down_kernel": dict(x1_ptr="*fp32", wdt_ptr="*{dt}", bd_ptr="*{dt}", idx_ptr="*i32", partial_ptr="*fp32",
                             tickets_ptr="*i32", out_ptr="*{dt}", n_tokens="i32", n_pos="i32", d_model="i32",
                             d_ff="i32"),
}


def variants(name: str, block_t: int):
    """Constexpr flags of the variants the module launches (ReLU, no biases)."""
    common = dict(BLOCK_T=block_t)
    # USE_GDC (pdl.py): every variant without it, and the default path's variant with it once.
    if name == "gate_kernel":
        return [dict(common, ACT=0, HAS_BIAS=False, PER_TOKEN=pt, IEEE=False, FUSE_UP=fu, HAS_BU=False, USE_GDC=g)
                for pt, fu, g in ((False, False, False), (True, False, False), (False, True, False), (False, False, True))]
    if name == "up_kernel":
        return [dict(common, ACT=0, FUSE_GATE=fg, HAS_BU=False, HAS_BG=False, MASK_PER_TOKEN=False,
                     PER_TOKEN=False, N_GIVEN=ng, IEEE=False, USE_GDC=g)
                for fg, ng, g in ((False, False, False), (True, False, False), (True, True, False), (False, False, True))]
    if name == "down_kernel":
        return [dict(common, HAS_BIAS=False, PER_TOKEN=False, N_GIVEN=ng, SKIP_ZERO=sz, PREFETCH=pf, IEEE=False,
                     FENCE=True, USE_GDC=g)
                for ng, sz, pf, g in ((False, False, False, False), (False, True, False, False),
                                      (True, True, False, False), (False, False, False, True), (True, True, True, True))]
    if name == "rows_ffn_kernel":  # one token only: exact (after the gate kernel; its sum as the output), index list,
        # atomic down
        return [dict(ACT=0, FUSE_GATE=fg, X1_GIVEN=xg, HAS_BG=False, HAS_BU=False, HAS_BD=False, N_GIVEN=ng,
                     ONE_STEP_D=True, SUM_IS_OUT=so, GATE_FIRST=gf, IEEE=False, FENCE=True, USE_GDC=False,
                     BLOCK_D=4096)
                for fg, xg, ng, so, gf in ((False, False, False, False, False), (False, False, False, True, False),
                                           (True, False, True, False, False), (False, True, True, False, False),
                                           (True, False, True, False, True))] if block_t == 1 else []
    if name == "gate_rows_kernel":  # one token only, the exact path in one kernel
        return [dict(ACT=0, HAS_BG=False, HAS_BU=False, HAS_BD=False, FENCE=True, BLOCK_D=4096)] if block_t == 1 else []
    if name == "compact_kernel":
        return [dict(common, PER_TOKEN=False, USE_GDC=g) for g in (False, True)]
    if name == "compact_up_kernel":  # batch 1 only: no BLOCK_T
        return [dict(ACT=0, HAS_BG=False, HAS_BU=False, IEEE=False)] if block_t == 1 else []
    if name == "pred_up_kernel":  # mask [1, d_ff], mask [T, d_ff], index list
        return [dict(common, ACT=0, HAS_BG=False, HAS_BU=False, HAS_IDX=hi, MASK_PER_TOKEN=mp, IEEE=False)
                for hi, mp in ((False, False), (False, True), (True, False))]
    if name == "pred_down_kernel":
        return [dict(common, HAS_BIAS=False, HAS_IDX=hi, IEEE=False, FENCE=True) for hi in (False, True)]
    return [dict(common, PER_TOKEN=False)]


def _jit_function(kernel):
    from triton.runtime.jit import JITFunction
    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def compile_one(kernel, arg_types: dict, consts: dict, num_warps: int, num_stages: int, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = _jit_function(kernel)
    sig = {n: ("constexpr" if n in consts else arg_types[n]) for n in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if n not in consts and (arg_types[n].startswith("*") or n in ("d_model", "d_ff"))}
    src = ASTSource(fn=fn, signature=sig, constexprs=dict(consts), attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def resources(compiled) -> dict:
    ptx = compiled.asm["ptx"]
    out = dict(ld_v4=len(re.findall(r"ld\.global[.\w]*\.v4", ptx)),
               ld_scalar16=len(re.findall(r"ld\.global[.\w]*\.b16\s", ptx)), shared=compiled.metadata.shared,
               red_v4=len(re.findall(r"(?<![.\w])red\.global[.\w]*\.v4", ptx)),
               red_scalar=len(re.findall(r"(?<![.\w])red\.global(?![.\w]*\.v[24])[.\w]*\s", ptx)),
               griddepcontrol=len(re.findall(r"griddepcontrol\.", ptx)),
               cp_async=len(re.findall(r"cp\.async\.(?:ca|cg)", ptx)))
    import triton
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    for key, field in (("regs", "REG"), ("stack", "STACK"), ("local", "LOCAL")):
        m = re.search(rf"{field}:(\d+)", usage)
        out[key] = int(m.group(1)) if m else None
    return out


def report(arch: int, dtype: str, quick: bool, only: list[str] | None = None) -> list[dict]:
    from . import (configs, triton_compact_up, triton_gate, triton_gate_rows, triton_predicted, triton_rows_ffn,
                   triton_up_down)
    kernels = {"compact_up_kernel": (triton_compact_up.compact_up_kernel, configs.COMPACT_UP_CONFIGS),
               "rows_ffn_kernel": (triton_rows_ffn.rows_ffn_kernel, configs.ROWS_CONFIGS),
               "gate_rows_kernel": (triton_gate_rows.gate_rows_kernel, configs.GATE_ROWS_CONFIGS),
               "gate_kernel": (triton_gate.gate_kernel, configs.GATE_CONFIGS),
               "up_kernel": (triton_up_down.up_kernel, configs.UP_CONFIGS),
               "down_kernel": (triton_up_down.down_kernel, configs.DOWN_CONFIGS),
               "compact_kernel": (triton_gate.compact_kernel, configs.COMPACT_CONFIGS),
               "pred_up_kernel": (triton_predicted.pred_up_kernel, configs.PRED_UP_CONFIGS),
               "pred_down_kernel": (triton_predicted.pred_down_kernel, configs.PRED_DOWN_CONFIGS)}
    rows = []
    for name, (kernel, cfgs) in kernels.items():
        if only and name not in only:
            continue
        arg_types = {k: v.format(dt=dtype) for k, v in KERNEL_ARGS[name].items()}
        for block_t in ((1,) if quick else (1, 16, 64)):
            kept = (cfgs if name in ("compact_up_kernel", "rows_ffn_kernel", "gate_rows_kernel")
                    else configs._prune_for_tokens(cfgs, {}, BLOCK_T=block_t))
            for flags in variants(name, block_t)[: 1 if quick else None]:
                for cfg in kept[: 1 if quick else None]:
                    row = dict(kernel=name, **flags, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                    try:
                        row.update(resources(compile_one(kernel, arg_types, {**flags, **cfg.kwargs},
                                                         cfg.num_warps, cfg.num_stages, arch)))
                    except Exception as err:  # reported per config, as the autotuner would skip it
                        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                    rows.append(row)
                    print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    keys = [k for k in row if k not in ("regs", "stack", "local", "shared", "ld_v4", "ld_scalar16", "red_v4",
                                        "red_scalar", "griddepcontrol", "cp_async", "error")]
    head = " ".join(f"{k}={row[k]}" for k in keys)
    if "error" in row:
        return f"{head} | FAILED {row['error']}"
    return (f"{head} | regs {row['regs']} local {row['local']} stack {row['stack']} shared {row['shared']} "
            f"ld.v4 {row['ld_v4']} ld.b16 {row['ld_scalar16']} red.v4 {row['red_v4']} red {row['red_scalar']} "
            f"cp.async {row['cp_async']} griddepcontrol {row['griddepcontrol']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="compile_report", description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--quick", action="store_true", help="one config and variant per kernel")
    p.add_argument("--kernels", default=None, help="comma list of kernel names (default: all)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_report compiles for a GPU target: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    rows = report(args.arch, args.dtype, args.quick, args.kernels.split(",") if args.kernels else None)
    failed = [r for r in rows if "error" in r]
    print(f"{len(rows)} compiled, {len(failed)} failed; spills in {sum(1 for r in rows if r.get('local'))}")
    return 1 if failed and len(failed) == len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
