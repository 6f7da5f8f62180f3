"""Benchmark 6: convolutional kernels of every depth in one pass vs one ``kernel_fn`` per depth.

    python benchmarks/bench_conv.py              # --quick: 200 images of 7 x 7, depths 1..4
    python benchmarks/bench_conv.py --full       # 600 images of 14 x 14, depths 1..8

Points: kanji renders (``kanji_tasks``, 14 x 14 or 7 x 7 pixels, on the sphere), ``arch='conv'``,
``Flatten`` readout (only the spatial diagonal of each layer's covariance: ``[P, P, H, W]``).

* ``one_pass``: ``list(kernels_by_depth(x, max_depth=L, architecture=conv))``: L blocks and L readout
  kernels, in blocks of point pairs under ``kernels.KERNEL_MEMORY_BYTES`` (2 GiB of intermediates).
* ``per_depth``: ``conv.network(d)[2](x, None, ('ntk', 'nngp'))`` for d = 1..L, each a whole network
  (``L (L + 1) / 2`` blocks), unblocked (neural-tangents' own call).

Each side runs once in a fresh process (its peak RSS is ``ru_maxrss``); both sides' kernels are
compared (max relative difference, every depth). Also reported: the seconds per point pair, pixel
and layer of the one pass (``convnets.SECONDS_PER_ENTRY``, the sweep's estimate) and the peak RSS
per pixel-pair array (``convnets.PASS_ARRAYS``).

Writes ``benchmarks/results/conv.csv``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import _common as C


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def points(n: int, side: int):
    from ntk_bridge.families import kanji_tasks

    t = kanji_tasks(seed=0, n_train=n // 20 + 1, n_test=1, n_support=5, n_query=15, dim=side * side)
    return t.all_points()[:n], t.image_shape


def child(side: str, n: int, side_px: int, L: int, save: str) -> None:
    import numpy as np

    import ntk_bridge  # noqa: F401
    from ntk_bridge.kernels import Architecture, kernels_by_depth

    x, shape = points(n, side_px)
    arch = Architecture(arch="conv", image_shape=shape)
    start = rss_mib()
    t = time.perf_counter()
    if side == "one_pass":
        ks = list(kernels_by_depth(x, max_depth=L, architecture=arch))
        ntk, nngp = np.stack([k.ntk for k in ks]), np.stack([k.readout for k in ks])
    else:
        ntk, nngp = [], []
        for d in range(1, L + 1):
            out = arch.network(d)[2](arch.as_input(x), None, ("ntk", "nngp"))
            ntk.append(np.asarray(out.ntk))
            nngp.append(np.asarray(out.nngp))
        ntk, nngp = np.stack(ntk), np.stack(nngp)
    seconds = time.perf_counter() - t
    np.savez(save, ntk=ntk, nngp=nngp)
    print("RESULT " + json.dumps(dict(side=side, images=n, pixels=side_px * side_px, depths=L, seconds=seconds,
                                      rss_start_mib=start, rss_peak_mib=rss_mib())))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (seconds); CSV to a temporary folder")
    ap.add_argument("--child", nargs=5, default=None)
    args = ap.parse_args(argv)
    if args.child:
        s, n, px, L, save = args.child
        return child(s, int(n), int(px), int(L), save)
    C.smoke(["--smoke"] if args.smoke else [])
    n, px, L = (12, 4, 2) if args.smoke else (600, 14, 8) if args.full else (200, 7, 4)
    import numpy as np

    from ntk_bridge import convnets

    tmp = tempfile.mkdtemp()
    rows, arrays = {}, {}
    for side in ("one_pass", "per_depth"):
        path = os.path.join(tmp, f"{side}.npz")
        print(f"{side}: {n} images of {px} x {px}, depths 1..{L} ...", flush=True)
        p = subprocess.run([sys.executable, __file__, "--child", side, str(n), str(px), str(L), path],
                           capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            print(p.stdout[-2000:], p.stderr[-3000:])
            return 1
        rows[side] = json.loads(line[0][7:])
        arrays[side] = np.load(path)
        print("  ", rows[side], flush=True)
    one, per = rows["one_pass"], rows["per_depth"]
    hw = px * px
    summary = dict(
        images=n, pixels=hw, depths=L, one_pass_s=one["seconds"], per_depth_s=per["seconds"],
        ratio=per["seconds"] / one["seconds"], layer_ratio=(L * (L + 1) / 2) / L,
        one_pass_peak_mib=one["rss_peak_mib"], per_depth_peak_mib=per["rss_peak_mib"],
        one_pass_rss_increase_mib=one["rss_peak_mib"] - one["rss_start_mib"],
        per_depth_rss_increase_mib=per["rss_peak_mib"] - per["rss_start_mib"],
        kernels_mib=2 * L * n * n * 8 / 2**20,
        seconds_per_entry=one["seconds"] / (n * n * hw * L),
        model_seconds_per_entry=convnets.SECONDS_PER_ENTRY,
        per_depth_arrays=(per["rss_peak_mib"] - per["rss_start_mib"]) * 2**20 / (8 * n * n * hw),
        model_pass_arrays=convnets.PASS_ARRAYS,
        ntk_max_rel=C.max_rel(arrays["one_pass"]["ntk"], arrays["per_depth"]["ntk"]),
        nngp_max_rel=C.max_rel(arrays["one_pass"]["nngp"], arrays["per_depth"]["nngp"]),
    )
    C.print_table("conv kernels: one pass vs kernel_fn per depth", [summary])
    C.write_csv("conv", [summary])


if __name__ == "__main__":
    sys.exit(main())
