"""Adaptive pacing against provider 429s: the previous release, the AIMD pacer and today's, in one run.

    .venv/bin/python -m bench.pacing [--images 30] [--latency 1.0] [--limit-images 60]

Every run is the CLI's engine (``generate_batch``: N workers, each attempt through the pacer, the
client's retries honouring Retry-After) against the stub OpenRouter (``tests/support/openrouter_stub``)
on 127.0.0.1, ``latency`` seconds per image. The policies:

* ``previous release`` (6400e76): no pacer; ``influencer generate`` had no rate ceiling by default, a
  429 was retried after its Retry-After (or the client's 1-2 s backoff), nothing else.
* ``AIMD (acd39db)``: ``bench/pacing_v1.AdaptiveRateV1``, the pacer of the releases since c93912a,
  with the CLI's default ceiling then (``settings.image_rate_per_s``, 2 req/s; none with ``--rate 0``).
* ``evidence (new)``: ``ai_influencer.pacing.AdaptiveRate`` with today's CLI default (no ceiling), and
  today's client: the first retry after an upstream 429 comes after 0.25-0.5 s (``openrouter/retry.py``).
  The two older policies keep the 1-2 s of their releases.

The scenarios:

* ``clean``: no 429 at all.
* ``random p``: the upstream provider answers a share ``p`` of image requests 429 whatever our rate,
  without ``X-RateLimit-*`` headers and without Retry-After (``--upstream-retry-after`` adds one).
* ``hard N/s, no headers``: the stub refuses what exceeds N requests in any second, 429 with
  Retry-After: 1 and no ``X-RateLimit-*`` headers (a provider's limit passed through);
  ``--rate 0``, ``--concurrency 8``, ``--limit-images`` images.
* ``OpenRouter N/s``: the same limit answered as OpenRouter's own (``X-RateLimit-*`` headers).

Per run: wall time, images, failed, 429s of all requests, the steady rate (images per second between
the first and last accepted image request on the stub's clock) and the rate the pacer settled on.
Goals (issue 23): random p=0.3 <= 2x the same policy's clean run; a hard limit with no configured rate
>= 0.8x the limit; a clean run no slower than the previous release.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_influencer.adaptive_pacing import AdaptiveRate
from ai_influencer.generation.engine import build_requests, generate_batch
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.openrouter.retry import WaitRetryAfterOrBackoff
from ai_influencer.pacing import StopFlag
from ai_influencer.prompt_bank import compose_prompts, load_prompt_bank
from bench.pacing_v1 import AdaptiveRateV1
from tests.support.openrouter_stub import IMAGE_CALLS, StubOpenRouter

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-or-bench"
MODEL = "google/gemini-2.5-flash-image"
IMAGE_PATH = IMAGE_CALLS  # the Image API, or chat for a model only chat serves
OLD_CLI_CEILING = 2.0  # settings.image_rate_per_s, the CLI's default --rate from c93912a to acd39db


class _V1Adapter:
    """The old pacer behind today's Pacer protocol (it never saw ``own_limit``)."""

    def __init__(self, ceiling: float | None, stop: StopFlag) -> None:
        self.inner = AdaptiveRateV1(ceiling, stop=stop)

    def before_send(self) -> None:
        self.inner.before_send()

    def on_response(self, rate_limited: bool, retry_after: float | None = None, *, own_limit: bool = False) -> None:
        self.inner.on_response(rate_limited, retry_after)

    def settled(self) -> float | None:
        return self.inner.finish().settled_rate


class _New:
    def __init__(self, ceiling: float | None, stop: StopFlag) -> None:
        self.inner = AdaptiveRate(ceiling, stop=stop)

    def before_send(self) -> None:
        self.inner.before_send()

    def on_response(self, rate_limited: bool, retry_after: float | None = None, *, own_limit: bool = False) -> None:
        self.inner.on_response(rate_limited, retry_after, own_limit=own_limit)

    def settled(self) -> float | None:
        return self.inner.finish().settled_rate


@dataclass
class Policy:
    name: str
    make: Callable[[bool, StopFlag], Any]  # (--rate 0 given?, the run's stop) -> pacer or None
    # The client's first retry after an upstream 429, as a share of its backoff (``WaitRetryAfterOrBackoff``):
    # 1.0 is the plain 1-2 s backoff of the releases before issue 23, the class default today's.
    upstream_first: float = WaitRetryAfterOrBackoff.UPSTREAM_FIRST


POLICIES = [
    Policy("previous release", lambda rate0, stop: None, upstream_first=1.0),
    Policy("AIMD (acd39db)", lambda rate0, stop: _V1Adapter(None if rate0 else OLD_CLI_CEILING, stop), 1.0),
    Policy("evidence (new)", lambda rate0, stop: _New(None, stop)),
]


@dataclass
class Scenario:
    name: str
    stub: dict[str, Any]
    images: int
    concurrency: int
    rate0: bool  # the user passed --rate 0 (no ceiling)
    limit: float | None = None


@dataclass
class Row:
    policy: str
    scenario: str
    wall_s: float
    images: int
    failed: int
    limited: int
    requests: int
    steady: float
    settled: float | None
    limit: float | None


def steady_rate(stub: StubOpenRouter) -> float:
    times = sorted(r.t for r in stub.requests if r.path.endswith(IMAGE_PATH) and r.status == 200)
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


def run_one(policy: Policy, scenario: Scenario, latency: float, seed: int, cap_s: float) -> Row:
    """One run; stopped after ``cap_s`` (nothing new is sent; the row then shows the wall time as > cap)."""
    bank = load_prompt_bank(ROOT / "prompt_bank" / "default.yaml")
    per_scene = -(-scenario.images // len(bank.scenes))
    requests = build_requests(compose_prompts(bank, per_scene, seed), MODEL, "1024x1024")[: scenario.images]
    stub_kw = {"latency": latency, "latency_paths": IMAGE_PATH, "image_size": 256, "seed": seed, **scenario.stub}
    with StubOpenRouter(valid_keys=[KEY], **stub_kw) as stub, tempfile.TemporaryDirectory() as out:
        stop = StopFlag()
        pacer = policy.make(scenario.rate0, stop)
        WaitRetryAfterOrBackoff.UPSTREAM_FIRST = policy.upstream_first  # this process runs one policy at a time
        timer = threading.Timer(cap_s, stop.request, args=(f"bench cap of {cap_s:g} s",))
        timer.start()
        with OpenRouterClient(KEY, base_url=stub.base_url) as client:
            start = time.perf_counter()
            outcomes = generate_batch(
                client, requests, Path(out), concurrency=scenario.concurrency, pacer=pacer, stop=stop
            )
            wall = time.perf_counter() - start
        timer.cancel()
        calls = [r for r in stub.requests if r.path.endswith(IMAGE_PATH)]
        return Row(
            policy.name,
            scenario.name,
            wall,
            sum(o.status == "generated" for o in outcomes),
            sum(o.status == "failed" for o in outcomes),
            sum(r.status == 429 for r in calls),
            len(calls),
            steady_rate(stub),
            pacer.settled() if pacer is not None else None,
            scenario.limit,
        )


def wall(seconds: float, cap: float) -> str:
    return f">{cap:g}" if seconds >= cap else f"{seconds:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--p", type=float, default=0.3, help="share of upstream 429s in the random scenario")
    ap.add_argument("--upstream-retry-after", default=None, help="Retry-After on upstream 429s (default: none)")
    ap.add_argument("--limit", type=float, default=3.0, help="the hard limit, requests per second")
    ap.add_argument("--limit-images", type=int, default=60)
    ap.add_argument("--scenarios", default="", help="comma-separated scenario name prefixes (default: all)")
    ap.add_argument("--seed", type=int, default=1, help="the first run's seed; repeats use the next ones")
    ap.add_argument("--repeat", type=int, default=3, help="runs per clean/random row; the row shows the median one")
    ap.add_argument("--limit-repeat", type=int, default=1, help="runs per hard-limit row")
    ap.add_argument("--cap", type=float, default=60.0, help="a run is stopped after this many seconds")
    ap.add_argument("--only", default="", help="comma-separated policy name prefixes to run (default: all)")
    args = ap.parse_args()
    scenarios = [
        Scenario("clean", {}, args.images, 4, rate0=False),
        Scenario(
            f"random p={args.p:g}",
            {"upstream_429": args.p, "upstream_retry_after": args.upstream_retry_after},
            args.images,
            4,
            rate0=False,
        ),
        Scenario(
            f"hard {args.limit:g}/s, no headers",
            {"rps_limit": args.limit, "retry_after": "1"},
            args.limit_images,
            8,
            rate0=True,
            limit=args.limit,
        ),
        Scenario(
            f"OpenRouter {args.limit:g}/s",
            {"rps_limit": args.limit, "retry_after": "1", "limit_headers": True},
            args.limit_images,
            8,
            rate0=True,
            limit=args.limit,
        ),
    ]
    chosen = [p.strip() for p in args.scenarios.split(",") if p.strip()]
    scenarios = [s for s in scenarios if not chosen or any(s.name.startswith(c) for c in chosen)]
    wanted = [p.strip() for p in args.only.split(",") if p.strip()]
    policies = [p for p in POLICIES if not wanted or any(p.name.startswith(w) for w in wanted)]
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for scenario in scenarios:
        for policy in policies:
            repeat = args.limit_repeat if scenario.limit else args.repeat
            runs = [run_one(policy, scenario, args.latency, args.seed + i, args.cap) for i in range(repeat)]
            median = statistics.median_low([r.wall_s for r in runs])
            rows.append(next(r for r in runs if r.wall_s == median))
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(
        f"pacing benchmark: stub latency {args.latency}s per image, {os.cpu_count()} CPUs, "
        f"median of {args.repeat} runs per clean/random row, {args.limit_repeat} per limit row (seeds from "
        f"{args.seed}), runs stopped after {args.cap:g} s"
    )
    print(f"load before: {load_before}\nload after:  {load_after}")
    clean = {r.policy: r.wall_s for r in rows if r.scenario == "clean"}
    prev_clean = clean.get("previous release")
    header = (
        f"| {'scenario':<24} | {'policy':<17} | {'images':>6} | {'failed':>6} | {'429s/requests':>13} | "
        f"{'wall s':>7} | {'x own clean':>11} | {'x prev. clean':>13} | {'steady img/s':>12} | "
        f"{'x limit':>7} | {'settled req/s':>13} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        own = r.wall_s / clean[r.policy] if r.policy in clean else float("nan")
        own_s = f"{'>' if r.wall_s >= args.cap else ''}{own:.2f}x"
        prev = r.wall_s / prev_clean if prev_clean and r.scenario == "clean" else None
        settled = "-" if r.settled is None else f"{r.settled:.2f}"
        print(
            f"| {r.scenario:<24} | {r.policy:<17} | {r.images:>6} | {r.failed:>6} | "
            f"{f'{r.limited}/{r.requests}':>13} | {wall(r.wall_s, args.cap):>7} | {own_s:>11} | "
            f"{'-' if prev is None else f'{prev:.2f}x':>13} | {r.steady:>12.2f} | "
            f"{'-' if r.limit is None else f'{r.steady / r.limit:.2f}x':>7} | {settled:>13} |"
        )
    print(
        "goals: random p <= 2x the same policy's clean run; hard limit with no configured rate >= 0.8x the limit; "
        "clean no slower than the previous release"
    )


if __name__ == "__main__":
    main()
