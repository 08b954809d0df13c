"""What makes two runs one configuration (records/configuration.py)."""

from records.configuration import configuration_id, configuration_of, differing_keys, format_value, label

BASE = {
    "seed_everything": 33, "model.class_path": "lightning_modules.MaskedLMPromptTuning",
    "model.backbone": "tiny-roberta", "model.learning_rate": 0.01, "model.prompt_length": 8, "data.task": "marker",
    "data.max_train_samples": None, "trainer.max_epochs": 3, "trainer.default_root_dir": "runs/a",
    "trainer.logger.id": "a", "trainer.logger.group": "quickstart", "trainer.logger.name": "x",
    "trainer.log_every_n_steps": 10, "data.num_workers": 0, "ckpt_path": None,
    "trainer.callbacks": [{"class_path": "callbacks.skill_neurons.SkillNeuronCallback", "init_args": {"part": "encoder"}}],
}


def test_seeds_paths_and_presentation_do_not_change_the_configuration():
    other = dict(BASE, seed_everything=34, **{"trainer.default_root_dir": "runs/b", "trainer.logger.id": "b",
                                               "trainer.logger.group": "g", "trainer.log_every_n_steps": 1,
                                               "data.num_workers": 4, "ckpt_path": "runs/a/checkpoints/last.ckpt",
                                               "data.predict_sets": ["validation"]})
    assert configuration_id(other) == configuration_id(BASE)
    assert differing_keys([BASE, other]) == []
    assert "seed_everything" not in configuration_of(BASE)
    assert configuration_of(BASE)["trainer.callbacks.SkillNeuronCallback.part"] == "encoder"


def test_hyper_parameters_data_size_and_callback_options_do():
    lr = dict(BASE, **{"model.learning_rate": 0.003})
    rows = dict(BASE, **{"data.max_train_samples": 64})
    part = dict(BASE, **{"trainer.callbacks": [{"class_path": "callbacks.skill_neurons.SkillNeuronCallback",
                                                "init_args": {"part": "decoder"}}]})
    ids = {configuration_id(c) for c in (BASE, lr, rows, part)}
    assert len(ids) == 4
    assert differing_keys([BASE, lr, dict(lr, seed_everything=34)]) == ["model.learning_rate"]
    assert differing_keys([BASE, rows]) == ["data.max_train_samples"]  # None (unset) vs 64
    assert differing_keys([BASE, part]) == ["trainer.callbacks.SkillNeuronCallback.part"]


def test_labels_are_short_and_readable():
    assert format_value(0.003) == "3e-3" and format_value(0.01) == "0.01" and format_value(1e-05) == "1e-5"
    assert format_value(True) == "true" and format_value([1, 2]) == "1,2"
    lr = dict(BASE, **{"model.learning_rate": 0.003})
    assert label(lr, ["model.learning_rate", "model.prompt_length"]) == "lr3e-3-p8"
    assert label(lr, ["trainer.max_epochs", "data.task"]) == "ep3-marker"
    assert label(lr, ["data.max_train_samples"]) == ""  # unset (null) keys are left out
    assert label(lr, []) == ""


def test_an_option_added_later_at_its_old_behaviour_keeps_older_runs_in_the_configuration():
    old = {"model.learning_rate": 0.003, "data.task": "sst2", "seed_everything": 33}
    new = {**old, "data.train_split": "train", "seed_everything": 34}
    assert configuration_id(old) == configuration_id(new)
    assert configuration_id({**new, "data.train_split": "validation"}) != configuration_id(old)
