"""``layout: paper``: P1's RoBERTa and T5 inputs, verbalizer ids, readout and loss, checked against an
independent P1 forward written here from Robust-Neurons' code (``src/models/modelling_roberta.py``,
``PromptRoberta.py``, ``PromptT5.py``, ``src/formatter/*Formatter.py``) — none of it calls our model code.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning import Trainer, seed_everything

from callbacks.skill_neurons import SkillNeuronCallback, SkillNeuronError, load_neuron_file
from datamodules import PromptDataModule
from datamodules.prompt_datamodule import Collator, check_p1_ids
from datamodules.tasks import P1_ROBERTA_BASE_IDS, TASKS, TaskError
from lightning_modules import MaskedLMPromptTuning, Seq2SeqPromptTuning
from lightning_modules.rules import LayoutError
from records.errors import OptionError
from tests.helpers import ROOT

P = 5
MAX_LEN = 12  # P1's max_len, small so that truncation happens
SENTENCES = ["the banana is on the table today and it is yellow and ripe and sweet", "a cat sat",
             "no fruit here at all", "banana bread is good", "the weather is grey and cold this week in town"]


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def task_files(tmp_path: Path, task: str) -> dict[str, str]:
    """Local train/validation files for a built-in task, in its hub columns."""
    if task in ("sst2", "sst2_sample"):
        rows = [{"sentence": s, "label": k % 2} for k, s in enumerate(SENTENCES)]
    elif task == "qnli":
        rows = [{"question": f"is {s.split()[1]} there ?", "sentence": s, "label": k % 2} for k, s in enumerate(SENTENCES)]
    elif task == "mnli":  # 0 entailment, 1 neutral (dropped), 2 contradiction
        rows = [{"premise": s, "hypothesis": SENTENCES[(k + 1) % 5], "label": (0, 1, 2)[k % 3]}
                for k, s in enumerate(SENTENCES * 2)]
    elif task == "qqp":
        rows = [{"question1": s, "question2": SENTENCES[(k + 2) % 5], "label": k % 2} for k, s in enumerate(SENTENCES)]
    else:
        raise ValueError(task)
    return {role: write_rows(tmp_path / f"{task}-{role}.jsonl", rows) for role in ("train", "validation")}


def setup(family: str, task: str, tmp_path: Path):
    seed_everything(1)
    cls, backbone = {"masked_lm": (MaskedLMPromptTuning, "tiny-roberta"),
                     "seq2seq": (Seq2SeqPromptTuning, "tiny-t5")}[family]
    model = cls(backbone=backbone, prompt_length=P, layout="paper").eval()
    with torch.no_grad():
        model.prompt.weight.normal_(0, 0.5)  # a prompt that is not the initial one
    dm = PromptDataModule(task=task, backbone=backbone, prompt_length=P, layout="paper", max_text_length=MAX_LEN,
                          files=task_files(tmp_path, task), adversarial=[])
    dm.prepare_data()
    dm.setup("validate")
    model.label_token_ids = torch.tensor(dm.label_token_ids)
    if dm.label_target_ids is not None:
        model.label_target_ids = torch.tensor(dm.label_target_ids)
    return model, dm


# ---------------------------------------------------------------- P1, written out (no model code of ours)
def p1_word_id(tokenizer, word: str) -> int:
    """PromptRoberta.py / PromptT5.py: tokenizer.encode(word, add_special_tokens=False), first id."""
    return tokenizer.encode(word, add_special_tokens=False)[0]


def p1_roberta_tokens(tokenizer, texts: list[str]) -> list[int]:
    """SST2/MNLI/QNLI/QQPPromptRobertaFormatter.process without the prompt ids."""
    enc = [tokenizer.encode(t.strip(), add_special_tokens=False) for t in texts]
    if len(enc) == 1:
        return [tokenizer.cls_token_id] + enc[0][:MAX_LEN] + [tokenizer.sep_token_id]
    tokens = [tokenizer.cls_token_id] + enc[0] + [tokenizer.sep_token_id] + enc[1] + [tokenizer.sep_token_id]
    if len(tokens) > MAX_LEN + 3:
        tokens = tokens[: MAX_LEN + 3 - 1] + [tokenizer.sep_token_id]
    return tokens


def p1_roberta_logits(model, tokens: list[int], words: list[str]) -> torch.Tensor:
    """modelling_roberta.RobertaEmbeddings.forward + PromptRoberta.forward for one example."""
    net = model.backbone.roberta
    emb = net.embeddings
    ids = torch.tensor(tokens)
    prompt = model.prompt.weight.detach().clone()  # (P, H)
    prompt[0] = emb.word_embeddings.weight[model.tokenizer.mask_token_id]  # prompt_emb.data[:,0,:] = <mask>
    word = torch.cat([prompt, emb.word_embeddings(ids)])  # (P+T, H)
    pad = model.backbone.config.pad_token_id
    positions = torch.cat([torch.full((P,), pad), pad + 1 + torch.arange(len(tokens))])  # prompts skipped
    position = emb.position_embeddings(positions)
    position[:P] = 0  # position_embeddings[:, :100, :] = 0
    token_type = emb.token_type_embeddings(torch.zeros(P + len(tokens), dtype=torch.long))
    hidden = emb.LayerNorm(word + position + token_type).unsqueeze(0)  # no dropout (commented out in P1)
    for layer in net.encoder.layer:
        out = layer(hidden)
        hidden = out[0] if isinstance(out, tuple) else out
    vocab = model.backbone.lm_head(hidden[0, 0])  # mask_logits = logits[:, 0]
    return vocab[[p1_word_id(model.tokenizer, w) for w in words]]


def p1_t5_tokens(tokenizer, task: str, row: dict) -> list[int]:
    """SST2/MNLI/QNLI/QQPPromptT5Formatter.process without the prompt ids."""
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    eos = enc("</s>")
    if task in ("sst2", "sst2_sample"):
        sent = enc(row["sentence"].strip())
        if len(sent) >= MAX_LEN:
            sent = sent[: MAX_LEN - 1]
        return sent + eos
    if task in ("mnli", "qnli"):
        first, second = (row["hypothesis"], row["premise"]) if task == "mnli" else (row["question"], row["sentence"])
        tokens = enc("hypothesis: " + first.strip()) + enc(" [SEP] sentence: ") + enc("premise: " + second.strip())
        return tokens[: MAX_LEN + 2]
    tokens = enc(row["question1"].strip()) + enc("<extra_id_0>") + enc(row["question2"].strip())
    if len(tokens) >= MAX_LEN + 2:
        tokens = tokens[: MAX_LEN + 1]
    return tokens + eos


def p1_t5_forward(model, tokens: list[int], words: list[str], target: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """PromptT5: prompt embeddings in front of the token embeddings; first decoder step's scores over the
    label words' first ids; the training loss of T5ForConditionalGeneration with labels = target."""
    net = model.backbone
    embeds = torch.cat([model.prompt.weight.detach(), net.shared(torch.tensor(tokens))]).unsqueeze(0)
    start = torch.tensor([[net.config.decoder_start_token_id]])
    first = net(inputs_embeds=embeds, decoder_input_ids=start).logits[0, 0]
    loss = net(inputs_embeds=embeds, labels=torch.tensor([target])).loss
    return first[[p1_word_id(model.tokenizer, w) for w in words]], loss


P1_WORDS = {  # label-id order of this project, then P1's extra scored word
    ("masked_lm", "sst2_sample"): ["negative", "positive"], ("masked_lm", "qnli"): ["yes", "no"],
    ("masked_lm", "mnli"): ["neutral", "no", "yes"], ("masked_lm", "qqp"): ["false", "true"],
    ("seq2seq", "sst2_sample"): ["negative", "positive"], ("seq2seq", "qnli"): ["entailment", "contradiction"],
    ("seq2seq", "mnli"): ["entailment", "contradiction", "neutral"], ("seq2seq", "qqp"): ["false", "true"],
}


@pytest.mark.parametrize("task", ["sst2_sample", "qnli", "mnli", "qqp"])
def test_roberta_paper_layout_equals_an_independent_p1_forward(tmp_path, tiny_backbones, task):
    model, dm = setup("masked_lm", task, tmp_path)
    rows = [r for r in dm.datasets["validation"]]
    source = [json.loads(line) for line in Path(task_files(tmp_path, task)["validation"]).read_text().splitlines()]
    source = [r for r in source if task != "mnli" or r["label"] != 1]  # P1 drops neutral
    fields = {"sst2_sample": ["sentence"], "qnli": ["question", "sentence"], "mnli": ["hypothesis", "premise"],
              "qqp": ["question1", "question2"]}[task]
    batch = Collator(dm.tokenizer.pad_token_id)(rows)
    with torch.no_grad():
        ours = model(batch)  # (B, C) one padded batch
        for k, row in enumerate(source):
            tokens = p1_roberta_tokens(dm.tokenizer, [row[f] for f in fields])
            assert rows[k]["input_ids"] == tokens, f"row {k}: our tokens differ from P1's formatter"
            want = p1_roberta_logits(model, tokens, P1_WORDS[("masked_lm", task)])
            torch.testing.assert_close(ours[k], want, atol=1e-5, rtol=1e-5)
    assert len(ours[0]) == len(P1_WORDS[("masked_lm", task)])


@pytest.mark.parametrize("task", ["sst2_sample", "qnli", "mnli", "qqp"])
def test_t5_paper_layout_equals_an_independent_p1_forward_and_label_token_loss(tmp_path, tiny_backbones, task):
    model, dm = setup("seq2seq", task, tmp_path)
    target_len = 2 if task in ("mnli", "qnli") else 1  # src/config/*PromptT5.config target_len
    words = P1_WORDS[("seq2seq", task)]
    source = [json.loads(line) for line in Path(task_files(tmp_path, task)["validation"]).read_text().splitlines()]
    source = [r for r in source if task != "mnli" or r["label"] != 1]
    collate = Collator(dm.tokenizer.pad_token_id)
    rows = list(dm.datasets["validation"])
    with torch.no_grad():
        ours = model(collate(rows))
        for k, row in enumerate(source):
            tokens = p1_t5_tokens(dm.tokenizer, task, row)
            assert rows[k]["input_ids"] == tokens, f"row {k}: our tokens differ from P1's formatter"
            label_word = words[rows[k]["label"]]
            target = dm.tokenizer.encode(label_word, add_special_tokens=False)[:target_len]
            target = target + [-100] * (target_len - len(target))
            want_logits, want_loss = p1_t5_forward(model, tokens, words, target)
            torch.testing.assert_close(ours[k], want_logits, atol=1e-5, rtol=1e-5)
            loss, _, _ = model.model_step(collate([rows[k]]))
            torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5)


def test_paper_masked_lm_prompt_slot_zero_is_the_mask_and_gets_no_gradient(tiny_backbones):
    model = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=P, layout="paper")
    vectors = model.prompt_vectors(2, torch.float32)
    mask = model.backbone.get_input_embeddings().weight[model.tokenizer.mask_token_id]
    assert torch.equal(vectors[0, 0], mask) and torch.equal(vectors[1, 1:], model.prompt.weight[1:])
    vectors.sum().backward()
    assert model.prompt.weight.grad[0].abs().sum() == 0 and model.prompt.weight.grad[1:].abs().sum() > 0


def test_analysed_positions_follow_the_layout_and_are_recorded(tmp_path, tiny_backbones):
    """``paper``: prompt slots 0..P-1 include the <mask> (slot 0); ``standard``: the <mask> is at P+1."""
    paper = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=P, layout="paper")
    standard = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=P)
    standard.mask_index = 1  # after <s>
    assert paper.neuron_positions("encoder", "prompt") == list(range(P))
    assert paper.neuron_positions("encoder", "mask") == [0]
    assert paper.neuron_positions("encoder", "prompt+mask") == list(range(P))
    assert standard.neuron_positions("encoder", "mask") == [P + 1]
    assert standard.neuron_positions("encoder", "prompt+mask") == [*range(P), P + 1]

    model, dm = setup("masked_lm", "sst2_sample", tmp_path)
    dm.setup("fit")
    for choice, expected in (("prompt", list(range(P))), ("mask", [0])):
        callback = SkillNeuronCallback(positions=choice, log_artifact=False)
        run = tmp_path / f"run-{choice}"
        trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                          enable_checkpointing=False, default_root_dir=str(run), callbacks=[callback])
        trainer.validate(model, datamodule=dm)
        tensors, meta = load_neuron_file(run / "skill_neurons" / "validation.safetensors")
        assert meta["layout"] == "paper" and meta["analysed_positions"] == choice
        assert meta["absolute_positions"] == expected and tensors["threshold"].shape[1] == len(expected)
        summary = json.loads((run / "summary.json").read_text())["skill_neurons"]
        assert summary["absolute_positions"] == expected and summary["analysed_positions"] == choice
        assert summary["layout"] == "paper"


def test_mask_positions_do_not_exist_for_t5(tmp_path, tiny_backbones):
    model, dm = setup("seq2seq", "sst2_sample", tmp_path)
    dm.setup("fit")
    trainer = SimpleNamespace(callbacks=[])
    with pytest.raises(OptionError, match=r"positions='mask'.*T5 has no <mask>"):
        SkillNeuronCallback(positions="mask").check_run(trainer, model, dm, "validate")


def test_paper_layout_needs_the_mask_slot_plus_one_vector(tiny_backbones):
    with pytest.raises(LayoutError, match="prompt_length=1 leaves no trainable vector"):
        MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=1, layout="paper")


def test_roberta_base_guard_refuses_ids_other_than_p1s():
    """A tokenizer stub named roberta-base: P1's ids pass, a leading-space id (the standard rule) is refused."""
    p1_vocab = {"negative": 33407, "positive": 22173, "Ġnegative": 2430, "Ġpositive": 1313,
                "no": 2362, "neutral": 12516, "yes": 10932}

    class Stub:
        name_or_path = "roberta-base"
        unk_token_id = 3

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [p1_vocab[text.replace(" ", "Ġ")]]}

        def convert_ids_to_tokens(self, ids):
            return [str(i) for i in ids]

    from datamodules.prompt_datamodule import verbalizer_token_ids

    stub = Stub()
    sst2, mnli = TASKS["sst2"], TASKS["mnli"]
    ids = verbalizer_token_ids(stub, "masked_lm", sst2, "paper")
    assert ids == [33407, 22173]
    check_p1_ids("roberta-base", stub, sst2, "masked_lm", "paper", ids)  # passes
    mnli_ids = verbalizer_token_ids(stub, "masked_lm", mnli, "paper")
    assert mnli_ids == [12516, 2362, 10932]  # entailment read at "neutral", "yes" scored as P1 does
    check_p1_ids("roberta-base", stub, mnli, "masked_lm", "paper", mnli_ids)
    standard = verbalizer_token_ids(stub, "masked_lm", sst2, "standard")
    assert standard == [2430, 1313]
    with pytest.raises(TaskError, match=r"must read P1's vocabulary ids \[33407, 22173\].*gives \[2430, 1313\]"):
        check_p1_ids("roberta-base", stub, sst2, "masked_lm", "paper", standard)
    check_p1_ids("roberta-base", stub, sst2, "masked_lm", "standard", standard)  # only paper is guarded
    assert set(P1_ROBERTA_BASE_IDS) >= {"sst2", "imdb", "movie_rationales", "qnli", "mnli", "qqp", "mrpc"}


def test_ethics_missing_offline_names_the_files_option(tmp_path, tiny_backbones):
    dm = PromptDataModule(task="ethics_deontology", backbone="tiny-roberta", prompt_length=P, layout="paper")
    with pytest.raises(TaskError, match=r"hendrycks/ethics/deontology.*--data.files"):
        dm.prepare_data()


def ethics_dir() -> Path:
    """ETHICS csv files (label,scenario[,excuse]; the release's or P1's src/data/), if a copy is at hand."""
    for candidate in (os.environ.get("SKILL_NEURONS_ETHICS_DIR"), ROOT.parent / "shared" / "data" / "ethics"):
        if candidate and (Path(candidate) / "deontology_test.csv").is_file():
            return Path(candidate)
    pytest.skip("no ETHICS files here: set SKILL_NEURONS_ETHICS_DIR to a folder with deontology_/justice_"
                "{train,test}.csv (the ETHICS release, or Robust-Neurons src/data/)")


@pytest.mark.parametrize("task, name", [("ethics_deontology", "deontology"), ("ethics_justice", "justice")])
def test_ethics_label_maps_on_real_rows(tmp_path, tiny_backbones, task, name):
    folder = ethics_dir()
    files = {"train": str(folder / f"{name}_train.csv"), "validation": str(folder / f"{name}_test.csv")}
    dm = PromptDataModule(task=task, backbone="tiny-t5", prompt_length=P, layout="paper", files=files,
                          adversarial=[], max_train_samples=50)
    dm.prepare_data()
    dm.setup("validate")
    with open(files["validation"], newline="") as f:
        raw = [row for row in csv.reader(f) if row[0] in ("0", "1")]  # P1's filter
    validation = dm.datasets["validation"]
    assert len(validation) == len(raw)
    words = dm.task.scored_words("seq2seq", "paper")[0]
    for k in (0, 1, len(raw) // 2, len(raw) - 1):
        assert validation[k]["label"] == int(raw[k][0])
        assert words[validation[k]["label"]] == {0: "unacceptable", 1: "acceptable"}[int(raw[k][0])]  # P1's dict_
        pieces = raw[k][1:3] if name == "deontology" else raw[k][1:2]
        tokens = sum((dm.tokenizer.encode(p.strip(), add_special_tokens=False) for p in pieces), [])
        assert validation[k]["input_ids"] == tokens[: 128 + 2]  # ethics*PromptT5Formatter: no </s>, max_len + 2


def test_another_masked_lm_follows_the_same_rules_or_is_refused(tmp_path, tiny_backbones):
    """BERT (absolute positions, no padding offset): prompt slots get zero position embeddings and the text is
    numbered from 0; a masked LM without absolute position embeddings is refused with the fix."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["tiny-roberta"])
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(tmp_path / "tiny-bert")
    tokenizer.save_pretrained(tmp_path / "tiny-bert")
    model = MaskedLMPromptTuning(backbone=str(tmp_path / "tiny-bert"), prompt_length=3, layout="paper").eval()
    ids = torch.tensor([[tokenizer.cls_token_id, 50, 60, tokenizer.sep_token_id]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mask_index": torch.tensor([-1])}
    inputs = model.embed(batch)
    assert inputs["position_ids"].tolist() == [[0, 0, 0, 0, 1, 2, 3]]
    emb = model.backbone.bert.embeddings
    with torch.no_grad():
        got = emb(inputs_embeds=inputs["inputs_embeds"], position_ids=inputs["position_ids"])[0, :3]
        prompt = model.prompt_vectors(1, torch.float32)[0]
        want = emb.LayerNorm(prompt + emb.token_type_embeddings.weight[0])  # no position term at all
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    relative = MaskedLMPromptTuning(backbone="tiny-roberta", prompt_length=3)
    relative.backbone.config.position_embedding_type = "relative_key"
    with pytest.raises(LayoutError, match="has none — use --model.layout=standard"):
        relative.check_layout("paper")


def test_a_task_without_a_paper_format_is_refused_under_paper(tiny_backbones):
    dm = PromptDataModule(task="mnli3", backbone="tiny-roberta", prompt_length=P, layout="paper")
    with pytest.raises(TaskError, match=r"no P1 input format for masked_lm.*--model.layout=standard"):
        dm.label_token_ids


# ---------------------------------------------------------------- P1's top-n% sizing under paper
@pytest.fixture(scope="module")
def paper_neuron_run(tmp_path_factory, tiny_backbones):
    """A paper-layout run directory with the skill-neuron files and summary of the tiny RoBERTa prompt."""
    from tests.helpers.tiny import make, validate

    root = tmp_path_factory.mktemp("paper-neurons")
    model, dm = make("masked_lm", "paper")
    validate(model, dm, root, SkillNeuronCallback())
    return root


def test_suppression_under_paper_suppresses_p1s_int_of_units_per_layer(tmp_path, paper_neuron_run):
    from callbacks.suppression import NeuronSuppression
    from records.neuron_selection import num_selected, top_percent_mask
    from tests.helpers.tiny import make, validate

    score = load_neuron_file(paper_neuron_run / "skill_neurons" / "validation.safetensors")[0]["score"]  # (2, 256)
    for rate, p1, ours in ((10, 25, 26), (15, 38, 39), (0.3, 0, 1)):  # int(256/100·rate) vs ceil(256·rate/100)
        for selection in ("skill", "random"):
            model, dm = make("masked_lm", "paper")
            suppression = NeuronSuppression(rate=rate, selection=selection, neurons=[str(paper_neuron_run)])
            validate(model, dm, tmp_path / f"{selection}-{rate:g}", suppression)
            assert [int(mask.sum(dim=1).max()) for mask in suppression.masks] == [p1, p1], (rate, selection)
            assert all(mask.sum(dim=1).tolist() == [p1, p1] for mask in suppression.masks)
            assert suppression.record["units_per_layer"] == p1 == num_selected(256, rate, "p1") != ours
            assert suppression.record["sizing"] == "p1"
            if selection == "skill":
                assert torch.equal(suppression.masks[0], top_percent_mask(score, rate, "p1"))
    model, dm = make("masked_lm")  # the same files under standard: our ceil
    standard = NeuronSuppression(rate=10, neurons=[str(paper_neuron_run)])
    validate(model, dm, tmp_path / "standard", standard)
    assert standard.masks[0].sum(dim=1).tolist() == [26, 26] and standard.record["sizing"] == "ceil"


def test_paper_analysis_sizes_its_top_n_sets_as_p1_and_the_report_recomputes_them(tmp_path, paper_neuron_run):
    from records.neuron_selection import mean_of_top, overlap_at, per_layer_top_means
    from skill_neurons.report.main import main as report_main

    summary = json.loads((paper_neuron_run / "summary.json").read_text())
    sets = summary["skill_neurons"]["sets"]
    clean = load_neuron_file(paper_neuron_run / "skill_neurons" / "validation.safetensors")[0]["score"]
    adversarial = load_neuron_file(paper_neuron_run / "skill_neurons" / "typos.safetensors")[0]["score"]
    for n in (1, 5, 10, 15):  # 256 units: P1's int gives 2, 12, 25, 38 units per layer, our ceil 3, 13, 26, 39
        assert sets["typos"][f"overlap@{n}"] == overlap_at(clean, adversarial, n, "p1")
        assert sets["typos"][f"clean_top{n}_predictivity"] == mean_of_top(clean, n, "p1", adversarial)
    assert sets["validation"]["top5_mean"] == mean_of_top(clean, 5, "p1")
    assert sets["validation"]["per_layer_top5_mean"] == per_layer_top_means(clean, 5, "p1")
    assert sets["validation"]["per_layer_top5_mean"] != per_layer_top_means(clean, 5, "ceil")
    # the report reads the same files and summary: its recomputed numbers (sized by the files' layout) agree
    run_dir = tmp_path / "runs" / "fit-paper"
    run_dir.mkdir(parents=True)
    for file in (paper_neuron_run / "skill_neurons").glob("*.safetensors"):
        (run_dir / "skill_neurons").mkdir(exist_ok=True)
        (run_dir / "skill_neurons" / file.name).write_bytes(file.read_bytes())
        for info in sets.values():
            if Path(info["file"]).name == file.name:
                info["file"] = str(run_dir / "skill_neurons" / file.name)
    summary.update(run_id="fit-paper", stage="fit", status="finished", finished="2024-01-01T00:00:00",
                   settings={"backbone": "tiny-roberta", "family": "masked_lm", "task": "marker_words", "seed": 33,
                             "layout": "paper"})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--percent", "5"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    (row,) = report["overlap"]["runs"]
    assert row["from"] == "neuron files" and report["overlap"]["mismatches"] == []
    assert row["overlap@5"] == sets["typos"]["overlap@5"] and row["overlap@15"] == sets["typos"]["overlap@15"]
    assert report["per_layer"]["mismatches"] == []
    assert report["per_layer"]["rows"][0]["per_layer_values"][0] == sets["validation"]["per_layer_top5_mean"]
