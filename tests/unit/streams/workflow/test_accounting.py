"""A job's own cost limit, checked before it is trusted as a limit."""

import math

import pytest

from streams.workflow.accounting import check_budget
from workers.errors import BudgetExceeded, InvalidJob


@pytest.mark.parametrize("limit", [math.nan, -1.0, math.inf, -math.inf])
def test_a_cost_limit_that_is_not_a_finite_amount_is_an_invalid_job(limit):
    """NaN compared false with every estimate, so it read as no limit at all."""
    with pytest.raises(InvalidJob, match="cost_limit_usd"):
        check_budget(None, {"cost_limit_usd": limit, "tenant": "t"}, 0.01)


def test_an_estimate_over_the_jobs_limit_is_over_budget():
    with pytest.raises(BudgetExceeded):
        check_budget(None, {"cost_limit_usd": 0.001, "tenant": "t"}, 0.01)
