"""W&B's environment as the command layer sees it: credentials, and whether a run goes offline (no wandb import)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

OFFLINE_MODES = ("offline", "disabled", "dryrun")


def wandb_has_credentials() -> bool:
    """True if W&B could log in without prompting: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


NO_CREDENTIALS = "no W&B credentials (WANDB_API_KEY or ~/.netrc)"


def offline_reason(reading: bool = False) -> str | None:
    """Why W&B cannot be used online now, or None. ``WANDB_MODE`` offline/disabled is a reason; so is a missing
    API key — when ``WANDB_MODE`` is unset (a run then logs offline instead of prompting: the CLI and the
    report's run decide the same way), or always when ``reading`` runs back through ``wandb.Api``."""
    mode = os.environ.get("WANDB_MODE")
    if mode in OFFLINE_MODES:
        return f"WANDB_MODE={mode}"
    if (reading or not mode) and not wandb_has_credentials():
        return NO_CREDENTIALS
    return None
