"""``skill-neurons attack``: adversarial sets made against a tuned prompt (:mod:`skill_neurons.attack.command`)."""

from records.errors import UserError


class AttackError(UserError, ValueError):
    """A mistake in an attack's command line or inputs; the message names the fix."""
