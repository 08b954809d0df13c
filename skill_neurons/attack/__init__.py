"""``skill-neurons attack``: adversarial sets made against a tuned prompt (:mod:`skill_neurons.attack.command`)."""
