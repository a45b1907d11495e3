"""LiteLLM's proxy as a benchmark target, installed in its own virtualenv.

LiteLLM is not a dependency of the gateway: ``benchmarks/.litellm-venv`` is created on first use
(``python3 -m venv`` and ``pip install 'litellm[proxy]'``, a few minutes) and reused after. The
proxy runs with one worker and no database; its master key is the benchmark's client key (as the
gateway checks a virtual key); two models pointing at the
benchmark's nginx upstream as an OpenAI-compatible server: ``gpt-4o-mini`` (plain answers) and
``bench-stream`` (a base URL whose answers always stream, since the proxy forwards no custom
header that would ask nginx for the stream).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".litellm-venv"
BIN = VENV / "bin" / "litellm"
#: The request model for the streaming probe through LiteLLM.
STREAM_MODEL = "bench-stream"

_CONFIG = """\
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {upstream}/v1
      api_key: sk-bench-upstream
  - model_name: {stream_model}
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {upstream}/stream/v1
      api_key: sk-bench-upstream
litellm_settings:
  telemetry: false
  drop_params: true
  set_verbose: false
general_settings:
  master_key: sk-bench
  disable_spend_logs: true
"""


class Unavailable(Exception):
    """LiteLLM could not be installed or found; the message says why."""


def ensure_installed(log: Path) -> Path:
    """The ``litellm`` command, installing it into its own virtualenv when missing."""
    if BIN.exists():
        return BIN
    print(f"installing LiteLLM into {VENV} (first run only; log: {log})", flush=True)
    with log.open("wb") as out:
        for cmd in (
            ["python3", "-m", "venv", str(VENV)],
            [str(VENV / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"],
        ):
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                raise Unavailable(f"{' '.join(cmd)} failed ({done.returncode}); see {log}")
    if not BIN.exists():
        raise Unavailable(f"no {BIN} after installing litellm[proxy]; see {log}")
    return BIN


def version() -> str:
    try:
        done = subprocess.run(
            [
                str(VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m;print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return "not installed"
    return done.stdout.strip() or "not installed"


def write_config(directory: Path, upstream: str) -> Path:
    path = directory / "litellm.yaml"
    path.write_text(_CONFIG.format(upstream=upstream, stream_model=STREAM_MODEL))
    return path


def command(config: Path, port: int) -> list[str]:
    return [
        str(BIN),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


def environment(base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(
        {
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price map at start
            "DISABLE_SCHEMA_UPDATE": "True",
            # The benchmark's key ("sk-bench", what wrk sends) is short; LiteLLM refuses weak
            # master keys unless told this is not a deployment.
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        }
    )
    env.pop("DATABASE_URL", None)
    return env
