"""Image generation throughput against the stub: Prefect fan-out vs the manual's sequential loop.

    .venv/bin/python bench/generate.py [--images 200] [--latency 2] [--rate 10]

Both runs talk to the same kind of stub OpenRouter server (2 s latency per
image, a hard limit of ``rate`` requests/second answered with 429). The
baseline is the manual's loop: one request at a time with ``--sleep 3``
between them. The goal: the fan-out reaches >= 0.9 x the rate limit and
>= 40x the sequential loop, never exceeding the limit.
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


def sequential(n: int, latency: float, sleep: float, rate: float) -> float:
    """The manual's loop: request, save, sleep; images per second."""
    bank = load_prompt_bank(ROOT / "prompt_bank" / "default.yaml")
    reqs = build_requests(compose_prompts(bank, max(1, n // len(bank.scenes) + 1), seed=1), MODEL, "1024x1024")[:n]
    with (
        StubOpenRouter(valid_keys=[KEY], latency=latency, rps_limit=rate, image_size=256) as stub,
        tempfile.TemporaryDirectory() as out,
    ):
        client = OpenRouterClient(KEY, base_url=stub.base_url)
        start = time.perf_counter()
        for i, r in enumerate(reqs):
            generate_one(client, r, Path(out))
            if i < len(reqs) - 1:
                time.sleep(sleep)
        return n / (time.perf_counter() - start)


def fanout(n: int, latency: float, rate: float, inflight: int) -> tuple[float, int, int]:
    """The generate flow under a real Prefect server; images/s, max requests in any 1 s, 429s."""
    from prefect.testing.utilities import prefect_test_harness

    bank = load_prompt_bank(ROOT / "prompt_bank" / "default.yaml")
    per_scene = -(-n // len(bank.scenes))
    with (
        StubOpenRouter(valid_keys=[KEY], latency=latency, rps_limit=rate, image_size=256) as stub,
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
            result["generated"] / elapsed,
            stub.max_requests_in_window(1.0),
            sum(r.status == 429 for r in stub.requests),
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--sequential-images", type=int, default=6)
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--inflight", type=int, default=32)
    args = ap.parse_args()
    seq = sequential(args.sequential_images, args.latency, 3.0, args.rate)
    fan, peak, throttled = fanout(args.images, args.latency, args.rate, args.inflight)
    print(f"generation benchmark: stub latency {args.latency}s, limit {args.rate} req/s")
    print(f"{'method':<34} | {'images':>6} | {'img/s':>7} | {'vs sequential':>13}")
    print("-" * 70)
    print(f"{'sequential loop, --sleep 3 (manual)':<34} | {args.sequential_images:>6} | {seq:>7.3f} | {1.0:>12.1f}x")
    print(f"{'Prefect fan-out (rate limit + cap)':<34} | {args.images:>6} | {fan:>7.3f} | {fan / seq:>12.1f}x")
    print(f"fan-out / rate limit = {fan / args.rate:.2f} (goal >= 0.90); peak {peak} req in 1 s; 429s: {throttled}")


if __name__ == "__main__":
    main()
