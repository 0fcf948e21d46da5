"""Image generation throughput against the stub: Prefect fan-out vs the manual's sequential loop,
and several workers sharing one provider limit.

    .venv/bin/python -m bench.generate [--images 300] [--latency 2] [--rate 10]
    .venv/bin/python -m bench.generate --workers 1,2,4 [--images 240]
    .venv/bin/python -m bench.generate --n 1,4 [--requests 120] [--latency 2] [--rate 10]

``--n``: images per request on the Image API (``POST /images`` with ``n``). For each n, the generate
flow sends the same number of requests (``--requests``) for n images each, against the stub's hard
request limit; it prints images/s and requests/s (the stub's clock), the peak requests in any 1 s and
the 429s. Goal: images/s with n = 4 >= 3.5x n = 1 (the baseline, same run), never above the limit.

``--workers``: for each N, N generate flow runs in N separate processes (workers) against one
Prefect server on PostgreSQL (a throw-away cluster), sharing one rate limit and one in-flight limit,
the stub answering 429 above the limit. Per N it prints the combined steady rate (the stub's clock,
while every run was sending) against the limit, and each run's share of it (goal: within 20 % of
the fair share). The baseline is N = 1 in the same run.

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
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")

from ai_influencer.generation.engine import build_requests, generate_one
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.openrouter.capabilities import resolve_route
from ai_influencer.prompt_bank import compose_prompts, load_prompt_bank
from tests.support.openrouter_stub import StubOpenRouter

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-or-bench"
MODEL = "google/gemini-2.5-flash-image"


IMAGE_PATH = ("/images", "/chat/completions")  # the Image API, or chat for a model only chat serves
N_MODEL = "bytedance-seed/seedream-4.5"  # the stub's model that takes n (1..4)


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
        route = resolve_route(client, MODEL)  # the route the product takes (the Image API for this model)
        start = time.perf_counter()
        for i, r in enumerate(reqs):
            generate_one(client, r, Path(out), route=route)
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
            result.generated,
            result.generated / elapsed,
            steady_rate(stub),
            stub.max_requests_in_window(1.0),
            sum(r.status == 429 for r in stub.requests),
        )


def per_request(n: int, requests: int, latency: float, rate: float, inflight: int) -> dict:
    """The generate flow with ``n`` images per request, ``requests`` requests; rates on the stub's clock."""
    from prefect.testing.utilities import prefect_test_harness

    scenes = len(load_prompt_bank(ROOT / "prompt_bank" / "default.yaml").scenes)
    per_scene = -(-requests // scenes) * n
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
            model=N_MODEL, n=n, per_scene=per_scene, use_references=False,
            limits=Limits(rate_limit_name=f"bench-rate-{tag}", rate_per_s=rate,
                          inflight_limit_name=f"bench-inflight-{tag}", max_inflight=inflight),
        )  # fmt: skip
        start = time.perf_counter()
        result = generate_flow(params, Paths(data_root=data, prompt_bank=str(ROOT / "prompt_bank" / "default.yaml")))
        elapsed = time.perf_counter() - start
        ok = sorted((r.t, r.images) for r in stub.requests if r.path.endswith(IMAGE_PATH) and r.status == 200)
    span = ok[-1][0] - ok[0][0] if len(ok) > 1 else float("nan")
    return {
        "n": n,
        "requests": len(ok),
        "images": result.generated,
        # between the first and the last admitted request: what the pacing sustains, fixed costs apart
        "steady_img_s": sum(images for _, images in ok[:-1]) / span,
        "steady_req_s": (len(ok) - 1) / span,
        "e2e_img_s": result.generated / elapsed,
        "peak": stub.max_requests_in_window(1.0, paths=IMAGE_PATH),
        "throttled": sum(r.status == 429 for r in stub.requests),
    }


def images_per_request_table(ns: list[int], requests: int, latency: float, rate: float, inflight: int) -> None:
    rows = [per_request(n, requests, latency, rate, inflight) for n in ns]
    print(f"images per request benchmark: {requests} requests per n, stub latency {latency}s per call, limit "
          f"{rate:g} req/s, in-flight {inflight}, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'n':>3} | {'requests':>8} | {'images':>6} | {'steady img/s':>12} | {'steady req/s':>12} | "
          f"{'img/s vs n=1':>12} | {'end-to-end img/s':>16} | {'peak req/1s':>11} | {'429s':>4}")  # fmt: skip
    base = next((r for r in rows if r["n"] == 1), rows[0])["steady_img_s"]  # the baseline: n = 1, same run
    for r in rows:
        print(
            f"{r['n']:>3} | {r['requests']:>8} | {r['images']:>6} | {r['steady_img_s']:>12.2f} | "
            f"{r['steady_req_s']:>12.2f} | {r['steady_img_s'] / base:>11.2f}x | {r['e2e_img_s']:>16.2f} | "
            f"{r['peak']:>11} | {r['throttled']:>4}"
        )
    print(f"goals: img/s with n=4 >= 3.5x n=1; peak <= {rate:g} requests in any 1 s")


def _worker_bank(folder: Path, i: int) -> Path:
    """A copy of the default bank whose persona text names worker ``i``: its requests can be told apart."""
    import yaml

    bank = yaml.safe_load((ROOT / "prompt_bank" / "default.yaml").read_text())
    bank["persona"]["description"] += f", worker w{i}"
    path = folder / f"bank-w{i}.yaml"
    path.write_text(yaml.safe_dump(bank))
    return path


def shared(workers: int, images: int, latency: float, rate: float, inflight: int, cluster: object) -> dict:
    """N workers, one server on PostgreSQL, one limit: combined steady img/s and each run's share."""
    from flows.params import GenerateParams, Limits, Paths
    from tests.support.flow_process import spawn_generate, wait_result
    from tests.support.prefect_server import prefect_server

    per_worker = -(-images // workers)
    with (
        StubOpenRouter(
            valid_keys=[KEY], latency=latency, latency_paths=IMAGE_PATH, rps_limit=rate, image_size=256
        ) as stub,
        tempfile.TemporaryDirectory() as tmp,
    ):
        home = Path(tmp) / "prefect"
        home.mkdir()
        with prefect_server(home, db=cluster, PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="2") as env:
            worker_env = {**env, "OPENROUTER_API_KEY": KEY, "OPENROUTER_BASE_URL": stub.base_url}
            tag = uuid.uuid4().hex[:6]
            limits = Limits(rate_limit_name=f"bench-rate-{tag}", rate_per_s=rate,
                            inflight_limit_name=f"bench-inflight-{tag}", max_inflight=inflight)  # fmt: skip
            procs = []
            for i in range(workers):
                data = Path(tmp) / f"w{i}"
                per_scene = -(-per_worker // 6)
                params = GenerateParams(per_scene=per_scene, use_references=False, limits=limits)
                paths = Paths(data_root=str(data), prompt_bank=str(_worker_bank(Path(tmp), i)),
                              models_root=str(data / "models"))  # fmt: skip
                procs.append(
                    (spawn_generate(params, paths, worker_env, Path(tmp) / f"w{i}.log"), Path(tmp) / f"w{i}.log")
                )
            results = [wait_result(proc, log, timeout=1800) for proc, log in procs]
    sent = [r for r in stub.requests if r.path.endswith(IMAGE_PATH) and r.status == 200]
    times = {i: sorted(r.t for r in sent if f"worker w{i}" in json.dumps(r.body)) for i in range(workers)}
    start = max(t[0] for t in times.values())  # every run sending
    end = min(t[-1] for t in times.values())
    in_window = {i: sum(start <= x <= end for x in t) for i, t in times.items()}
    window = max(end - start, 1e-9)
    combined = sum(in_window.values()) / window if workers > 1 else steady_rate(stub)
    shares = [n / window for n in in_window.values()]
    return {
        "workers": workers,
        "images": sum(r["generated"] for r in results),
        "combined": combined,
        "shares": shares,
        "fair": combined / workers,
        "peak": stub.max_requests_in_window(1.0),
        "throttled": sum(r.status == 429 for r in stub.requests),
    }


def workers_table(counts: list[int], images: int, latency: float, rate: float, inflight: int) -> None:
    from tests.support.postgres import postgres_cluster

    with postgres_cluster(fast=True) as cluster:
        rows = [shared(n, images, latency, rate, inflight, cluster) for n in counts]
    print(f"shared-limit benchmark: {images} images per N, stub latency {latency}s, limit {rate:g} req/s, "
          f"in-flight {inflight}, Prefect server on PostgreSQL, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'workers':>7} | {'images':>6} | {'combined img/s':>14} | {'vs limit':>8} | {'vs N=1':>6} | "
          f"{'per-run share (img/s)':<32} | {'worst vs fair':>13} | {'peak/s':>6} | {'429s':>4}")  # fmt: skip
    base = rows[0]["combined"]
    for r in rows:
        worst = max(abs(s - r["fair"]) / r["fair"] for s in r["shares"]) if r["workers"] > 1 else 0.0
        shares = ", ".join(f"{s:.2f}" for s in r["shares"])
        print(
            f"{r['workers']:>7} | {r['images']:>6} | {r['combined']:>14.2f} | {r['combined'] / rate:>7.2f}x | "
            f"{r['combined'] / base:>5.2f}x | {shares:<32} | {worst:>12.0%} | {r['peak']:>6} | {r['throttled']:>4}"
        )
    print("goals: combined >= 0.90x the limit for every N; every run within 20 % of its fair share")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--sequential-images", type=int, default=6)
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--workers", help="comma-separated worker counts, e.g. 1,2,4: the shared-limit benchmark")
    ap.add_argument("--n", help="comma-separated images per request, e.g. 1,4: the Image API's n benchmark")
    ap.add_argument("--requests", type=int, default=120, help="requests per n (--n)")
    args = ap.parse_args()
    if args.n:
        ns = [int(n) for n in args.n.split(",")]
        images_per_request_table(ns, args.requests, args.latency, args.rate, args.inflight)
        return
    if args.workers:
        workers_table([int(n) for n in args.workers.split(",")], args.images, args.latency, args.rate, args.inflight)
        return
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
