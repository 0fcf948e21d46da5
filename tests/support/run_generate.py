"""Run one ``generate_flow`` in this process against the Prefect server in PREFECT_API_URL.

Tests and benches start several of these as separate processes (separate workers, one server) to
check how runs share one provider limit. Prints the flow's summary as one JSON line.

    python -m tests.support.run_generate --data DIR --bank BANK --per-scene N --seed S \
        --rate-limit NAME --rate R --inflight-limit NAME --inflight K
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--per-scene", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate-limit", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--inflight-limit", required=True)
    ap.add_argument("--inflight", type=int, required=True)
    args = ap.parse_args()

    from flows.generate import generate_flow
    from flows.params import GenerateParams, Limits, Paths

    limits = Limits(
        rate_limit_name=args.rate_limit,
        rate_per_s=args.rate,
        inflight_limit_name=args.inflight_limit,
        max_inflight=args.inflight,
    )
    summary = generate_flow(
        GenerateParams(per_scene=args.per_scene, seed=args.seed, limits=limits, use_references=False),
        Paths(data_root=args.data, prompt_bank=args.bank, models_root=args.data + "/../models"),
    )
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
