"""A video run in a child process, for kill-and-resume tests: ``python -m tests.support.video_child BASE_URL DATA``.

It plans one clip per shot of ``DATA/text/storyboard.json`` in ``references`` mode (``DATA/cleaned``) and
runs ``run_video`` into ``DATA/video`` against the stub at ``BASE_URL``, printing each event, so the parent
can kill it at a known moment (``SIGKILL``: no handler, no cleanup) and resume in another process.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.openrouter.videos import VideoAPI
from ai_influencer.storyboard import Storyboard
from ai_influencer.video.clips import REFERENCES, plan_clips
from ai_influencer.video.jobs import VideoRunResult, run_video
from ai_influencer.video.ledger import VideoStore
from ai_influencer.video.polling import WaitPolicy

MODEL = "google/veo-3.1-fast"
KEY = "sk-or-test-key"


def plan_and_run(
    base_url: str, data: Path, *, policy: WaitPolicy, on_event: Callable[[str], None] | None = None
) -> VideoRunResult:
    board = Storyboard.model_validate(json.loads((data / "text" / "storyboard.json").read_text()))
    with OpenRouterClient(KEY, base_url=base_url, backoff_initial=0.01, retry_cap=0.2, max_retries=2, timeout=10) as c:
        api = VideoAPI(c)
        planning = plan_clips(
            board, api.get_model(MODEL), mode=REFERENCES, references_dir=data / "cleaned", resolution="720p"
        )
        return run_video(api, planning.plans, VideoStore(data / "video"), policy=policy, on_event=on_event)


def main() -> None:
    base_url, data = sys.argv[1], Path(sys.argv[2])
    policy = WaitPolicy(poll_initial_s=0.05, poll_max_s=0.1, deadline_s=600)
    result = plan_and_run(base_url, data, policy=policy, on_event=lambda m: print(m, flush=True))
    print("RESULT", json.dumps(result.counts), flush=True)


if __name__ == "__main__":
    main()
