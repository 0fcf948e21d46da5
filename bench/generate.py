"""Image generation throughput against the stub: Prefect fan-out vs the manual's sequential loop.

    .venv/bin/python bench/generate.py [--images 300] [--latency 2] [--rate 10]

Both runs talk to the same kind of stub OpenRouter server (``latency`` seconds
per image request, a hard limit of ``rate`` requests in any one second answered
with 429). The baseline is the manual's loop: one request at a time with
``--sleep 3`` between them. Two numbers per method, both from the stub's own
clock:

* steady img/s: images per second while generating, (n - 1) / (last request -
  first request). This is what the goals are about: how much of the rate limit
  the fan-out uses, and how many times faster than the manual's loop it is.
* end-to-end img/s: images / wall time of the whole call, which also counts
  the fixed costs (flow start, the free key/model checks, the last image's
  latency, the manifest) that a longer run spreads thinner.

Goals: steady >= 0.9 x the rate limit and >= 40x the sequential loop, the limit
never exceeded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")

from ai_influencer.generation import build_requests, generate_one
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.prompt_bank import compose_prompts, load_prompt_bank
from tests.support.openrouter_stub import StubOpenRouter

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-or-bench"
MODEL = "google/gemini-2.5-flash-image"


IMAGE_PATH = ("/chat/completions",)


def steady_rate(stub: StubOpenRouter) -> float:
    """Images per second between the first and the last admitted image request, on the stub's clock."""
    times = sorted(r.t for r in stub.requests if r.path.endswith(IMAGE_PATH) and r.status == 200)
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


def sequential(n: int, latency: float, sleep: float, rate: float) -> tuple[float, float]:
    """The manual's loop: request, save, sleep; (end-to-end, steady) images per second."""
    bank = load_prompt_bank(ROOT / "prompt_bank" / "default.yaml")
    reqs = build_requests(compose_prompts(bank, max(1, n // len(bank.scenes) + 1), seed=1), MODEL, "1024x1024")[:n]
    with (
        StubOpenRouter(
            valid_keys=[KEY], latency=latency, latency_paths=IMAGE_PATH, rps_limit=rate, image_size=256
        ) as stub,
        tempfile.TemporaryDirectory() as out,
    ):
        client = OpenRouterClient(KEY, base_url=stub.base_url)
        start = time.perf_counter()
        for i, r in enumerate(reqs):
            generate_one(client, r, Path(out))
            if i < len(reqs) - 1:
                time.sleep(sleep)
        return n / (time.perf_counter() - start), steady_rate(stub)


def fanout(n: int, latency: float, rate: float, inflight: int) -> tuple[int, float, float, int, int]:
    """The generate flow under a real Prefect server.

    Returns images, end-to-end and steady images/s, the most requests the stub admitted in any 1 s,
    and how many it refused with 429.
    """
    from prefect.testing.utilities import prefect_test_harness

    bank = load_prompt_bank(ROOT / "prompt_bank" / "default.yaml")
    per_scene = -(-n // len(bank.scenes))
    with (
        StubOpenRouter(
            valid_keys=[KEY], latency=latency, latency_paths=IMAGE_PATH, rps_limit=rate, image_size=256
        ) as stub,
        prefect_test_harness(server_startup_timeout=120),
        tempfile.TemporaryDirectory() as data,
    ):
        os.environ.update(OPENROUTER_API_KEY=KEY, OPENROUTER_BASE_URL=stub.base_url)
        from flows.generate import generate_flow
        from flows.params import GenerateParams, Limits, Paths

        tag = uuid.uuid4().hex[:6]
        params = GenerateParams(
            per_scene=per_scene,
            use_references=False,
            limits=Limits(
                rate_limit_name=f"bench-rate-{tag}",
                rate_per_s=rate,
                inflight_limit_name=f"bench-inflight-{tag}",
                max_inflight=inflight,
            ),
        )
        start = time.perf_counter()
        result = generate_flow(params, Paths(data_root=data, prompt_bank=str(ROOT / "prompt_bank" / "default.yaml")))
        elapsed = time.perf_counter() - start
        return (
            result["generated"],
            result["generated"] / elapsed,
            steady_rate(stub),
            stub.max_requests_in_window(1.0),
            sum(r.status == 429 for r in stub.requests),
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--sequential-images", type=int, default=6)
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--inflight", type=int, default=32)
    args = ap.parse_args()
    seq_e2e, seq_steady = sequential(args.sequential_images, args.latency, 3.0, args.rate)
    n, fan_e2e, fan_steady, peak, throttled = fanout(args.images, args.latency, args.rate, args.inflight)
    print(
        f"generation benchmark: stub latency {args.latency}s per image, limit {args.rate} req/s, {os.cpu_count()} CPUs"
    )
    print(f"{'method':<36} | {'images':>6} | {'steady img/s':>12} | {'end-to-end':>10} | {'steady vs seq':>13}")
    print("-" * 92)
    rows = [
        ("sequential loop, --sleep 3 (manual)", args.sequential_images, seq_steady, seq_e2e),
        ("Prefect fan-out (rate limit + cap)", n, fan_steady, fan_e2e),
    ]
    for name, count, steady, e2e in rows:
        print(f"{name:<36} | {count:>6} | {steady:>12.3f} | {e2e:>10.3f} | {steady / seq_steady:>12.1f}x")
    print(
        f"steady / rate limit = {fan_steady / args.rate:.2f} (goal >= 0.90); "
        f"steady vs sequential = {fan_steady / seq_steady:.1f}x (goal >= 40x); "
        f"end-to-end / rate limit = {fan_e2e / args.rate:.2f}"
    )
    print(f"peak {peak} requests in any 1 s (limit {args.rate:g}); 429s: {throttled}")


if __name__ == "__main__":
    main()
