"""Compile every npkernels Triton kernel ahead of time for sm_90 and print one JSON line per variant.

Run as a script (``python tests/kernels/aot_sm90.py``) in a process WITHOUT ``TRITON_INTERPRET``:
under the interpreter ``@triton.jit`` returns interpreted functions that cannot be compiled.
Weight tiles are host-built TMA descriptors (``tensordesc<dtype[block]>`` in the signature).
Production widths: hidden 256, projection hidden 256, projection 128, 4 layers (condition width
512 only changes the host-side bias, not the kernels). Tiles and warps come from
``npkernels._triton_utils.DotConfig`` so the check covers what a GPU run launches.
"""

from __future__ import annotations

import json
import sys
import time

import torch

PROD = {"L": 4, "H": 256, "P": 128, "HP": 256}


def _signature(fn, pointers: dict[str, str], consts: dict) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith(("_ptr", "_desc")):
            sig[name] = pointers.get(name, "*fp32")
        elif name == "radius":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def variants():
    from npkernels._triton_utils import DotConfig
    from npkernels.coupling._triton import _coupling_kernel
    from npkernels.coupling._triton_backward import _coupling_backward_kernel
    from npkernels.implicit._triton import _implicit_union_kernel
    from npkernels.knn._triton import BLOCK_C, BLOCK_Q, _knn_kernel

    fp32, bf16 = DotConfig("tf32", torch.float32), DotConfig("ieee", torch.bfloat16)
    ieee = DotConfig("ieee", torch.float32)
    for name, cfg in (("fp32-tf32", fp32), ("fp32-ieee", ieee), ("bf16", bf16)):
        wt = "bf16" if cfg.operand_dtype == torch.bfloat16 else "fp32"
        H, P, BK = PROD["H"], PROD["P"], cfg.block_k
        blocks = {"pw2_desc": (P, BK), "w1_desc": (BK, P), "w2_desc": (H, BK), "w3_desc": (16, H)}
        weights = {k: f"tensordesc<{wt}[{a}, {b}]>" for k, (a, b) in blocks.items()}
        tiles = dict(BLOCK_R=cfg.block_r, BLOCK_K=BK, DOT_PREC=cfg.precision, **PROD)
        opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        io = "*bf16" if cfg.operand_dtype == torch.bfloat16 else "*fp32"
        for inverse in (True, False) if name != "fp32-ieee" else (True,):  # IEEE: FMA path, ~15 s each
            consts = dict(tiles, INVERSE=inverse, HAS_OWNER=inverse, WRITE_LOG_DET=True, STORE_STAGES=inverse,
                          ALL_S=False)
            ptrs = dict(weights, x_ptr=io, out_ptr=io, owner_ptr="*i64")
            yield (
                f"coupling-{'inverse' if inverse else 'forward'}-{name}",
                _coupling_kernel,
                ptrs,
                consts,
                opts,
                True,
            )
        if name == "fp32-ieee":
            continue
        for inverse in (True, False):
            consts = dict(tiles, INVERSE=inverse, HAS_OWNER=inverse, HAS_GLD=True, ALL_S=False,
                          BLOCK_R=cfg.backward().block_r)
            yield (
                f"coupling-backward-{'inverse' if inverse else 'forward'}-{name}",
                _coupling_backward_kernel,
                dict(weights, owner_ptr="*i64"),
                consts,
                {"num_warps": cfg.backward().num_warps, "num_stages": cfg.backward().num_stages},
                True,
            )
        consts = dict(tiles, PER_PRIMITIVE=True)
        yield (
            f"implicit-{name}",
            _implicit_union_kernel,
            dict(weights, x_ptr=io, value_ptr=io, g_ptr=io, arg_ptr="*i64"),
            consts,
            opts,
            True,
        )
    consts = {"HAS_XM": True, "HAS_YM": True, "BLOCK_Q": BLOCK_Q, "BLOCK_C": BLOCK_C}
    ptrs = {"xm_ptr": "*u8", "ym_ptr": "*u8", "idx_xy_ptr": "*i64", "idx_yx_ptr": "*i64"}
    yield "knn-masked", _knn_kernel, ptrs, consts, {"num_warps": 4}, False


def main() -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for name, fn, ptrs, consts, opts, uses_dot in variants():
        start = time.perf_counter()
        try:
            k = triton.compile(
                ASTSource(fn, _signature(fn, ptrs, consts), consts),
                target=GPUTarget("cuda", 90, 32),
                options=opts,
            )
            ptx = k.asm["ptx"]
            row = {
                "name": name,
                "ok": True,
                "shared": k.metadata.shared,
                "wgmma": ptx.count("wgmma.mma_async"),
                "mma": ptx.count("mma."),
                "uses_dot": uses_dot,
                "seconds": round(time.perf_counter() - start, 1),
            }
        except Exception as err:  # noqa: BLE001 - reported per variant; the test fails on it
            error = f"{type(err).__name__}: {str(err)[:2000]}"
            row = {"name": name, "ok": False, "error": error, "uses_dot": uses_dot}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
