"""Base class for every typed parameter block (pydantic v2).

Blocks reject unknown keys, NaN and infinities, and are immutable. Each field carries its default, range and a
description that cites the seed where the value comes from; ``python -m metaland params`` prints
them all, so the code is the one place a knob is documented.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """A validated, frozen block of parameters that rejects unknown keys and non-finite numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


class NoOptions(Params):
    """For registry entries that take no options."""
