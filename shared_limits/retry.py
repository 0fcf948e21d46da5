"""Retry policy of the stage tasks: one retry owner per error class.

HTTP-level faults belong to the OpenRouter client (its own jittered retries of 429/5xx/deadline/cut
bodies; fatal 4xx are never retried). Prefect task retries handle what the client cannot see: an
OSError writing a file, a crashed worker thread, a broken Prefect API call.
"""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from ai_influencer.costs import BudgetExceededError, RunHaltedError
from ai_influencer.openrouter import OpenRouterError
from ai_influencer.pacing import StopRequested
from ai_influencer.prompt_bank import PromptBankError
from ai_influencer.settings import MissingApiKeyError, Settings

# Errors a Prefect task retry must not retry. OpenRouter errors: the client already owns them
# (its own jittered retries of 429/5xx/deadline/cut bodies; fatal 4xx are never retried); a task
# retry on top multiplied the attempts (5 client x 3 task retries = up to 24 per image during an
# outage). The rest no retry can fix: budget, a drained run, configuration.
NEVER_RETRY: tuple[type[BaseException], ...] = (
    OpenRouterError,
    StopRequested,
    BudgetExceededError,
    RunHaltedError,
    MissingApiKeyError,
    PromptBankError,
    FileNotFoundError,
    ValueError,
)


def should_retry(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: one retry owner per error class.

    HTTP-level faults belong to the OpenRouter client; Prefect retries what the client cannot
    see (an OSError writing a file, a crashed worker thread, a broken Prefect API call).
    """
    try:
        state.result()
    except NEVER_RETRY:
        return False
    except Exception:
        return True
    return False


def retry_options(settings: Settings | None = None) -> dict[str, Any]:
    """``@task`` keyword arguments: ``task_retries`` attempts, exponential backoff with jitter, and
    ``should_retry`` as the condition. Read from the worker's settings when the task module loads."""
    s = settings or Settings()
    return {
        "retries": s.task_retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=max(s.task_retry_delay_s, 0.01)),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": should_retry,
    }
