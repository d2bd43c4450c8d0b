"""Typed params: every profile resolves; bad values stop with a message naming the key and the fix."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metaland.config import TrainConfig, load_params, resolve
from metaland.errors import ConfigError
from metaland.meta import ALGORITHMS
from metaland.models import MODELS

REPO = Path(__file__).resolve().parents[1]
RUN = "guiroy2019-maml-omniglot-small-5w1s-s0"


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(raw, source="params.yaml")
    message = str(info.value)
    assert "\n" not in message, "messages are one paragraph"
    assert "Fix" in message
    return message


@pytest.mark.parametrize("profile", ["ci", "default", "long", "paper"])
def test_every_profile_resolves(profile):
    config = load_params(REPO / "profiles" / f"{profile}.yaml")
    assert config.profile == profile
    assert config.runs and all(run.key.startswith(f"{run.study}-") for run in config.runs.values())


def test_the_long_profile_is_the_default_with_three_seeds_and_600_tasks():
    """Every run family of the default profile in three seeds, nothing else changed but the task sets and the
    checkpoints probed (every one of the schedule where the default thins them); and the file is what
    `metaland profile --write-long` makes of the default (edited by hand, it would drift)."""
    from metaland.profiles import long_profile

    text = (REPO / "profiles" / "default.yaml").read_text()
    assert (REPO / "profiles" / "long.yaml").read_text() == long_profile(text)
    default, long = (load_params(REPO / "profiles" / f"{p}.yaml") for p in ("default", "long"))

    def family(key: str) -> str:
        return key.rsplit("-s", 1)[0]

    assert {family(k) for k in long.runs} == {family(k) for k in default.runs}
    for stem in {family(k) for k in long.runs}:
        seeds = sorted(r.seed for k, r in long.runs.items() if family(k) == stem)
        assert seeds == list(range(seeds[0], seeds[0] + 3)), stem
    for name, study in long.studies.items():
        assert study.probe.tasks == 600 and study.aggregate.min_seeds == 3
        thinned = default.studies[name].extract.every
        assert study.extract.every == min(thinned, 1), name
        assert study.extract.model_dump(exclude={"every"}) == default.studies[name].extract.model_dump(
            exclude={"every"}
        )
        assert study.probe.model_copy(update={"tasks": 0}) == default.studies[name].probe.model_copy(
            update={"tasks": 0}
        )
    assert default.studies["guiroy2019"].extract.every == 2, "the default probes every 2nd checkpoint of guiroy2019"


def test_params_yaml_is_the_default_profile():
    assert (REPO / "params.yaml").read_text() == (REPO / "profiles" / "default.yaml").read_text()


@pytest.mark.parametrize("profile", ["ci", "default", "long", "paper"])
def test_profiles_spell_out_every_training_knob(profile):
    """Defaults in code never silently apply: each profile names every train knob of its studies."""
    raw = yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text())
    for study in raw["studies"].values():
        assert set(study["defaults"]["train"]) == set(TrainConfig.model_fields)


def test_paper_profile_has_the_sharp_maml_setting():
    """Seed 002's table: miniImageNet 5-way 1-shot, Conv-4-64; the four variants on the same seeds, and
    Sharp-MAML_both at five more radii; the official code's inner step 0.1, one inner step, meta-batch 25,
    50 × 100 iterations."""
    config = load_params(REPO / "profiles" / "paper.yaml")
    runs = config.runs_of("sharpmaml")
    variants: dict[str, list[int]] = {}
    for run in runs:
        assert (run.dataset, run.ways, run.shots, run.model.filters) == ("miniimagenet", 5, 1, 64)
        assert (run.train.inner_steps, run.train.inner_lr, run.train.meta_batch) == (1, 0.1, 25)
        assert run.train.iterations == 5000
        name = ALGORITHMS.get(run.algorithm).variant_of(run.algorithm_options)
        variants.setdefault(name, []).append(run.seed)
    sweep = [f"sharpmaml-both@{r}" for r in (0.01, 0.02, 0.1, 0.2, 0.5)]  # SAM's grid of ρ, α_low = α_up
    assert variants == {v: [0, 1, 2] for v in ("maml", "sharpmaml-low", "sharpmaml-up", "sharpmaml-both", *sweep)}


def test_paper_profile_has_the_lil_setting():
    """Seed 004 §6, App. C: 4-conv on miniImageNet and CUB 5-way 1/5-shot, S = 3, α = 0.5, meta-batch 4, 30k
    iterations, meta-lr 0.001; MAML, FOMAML, ANIL, BOIL ± LIL (Table 2) on both and the Table 5 ablation on
    miniImageNet, on the same 3 seeds; λ_phase 0.1, λ_amp 0.01 (1-shot) / 0.1 (5-shot) for MAML only; FOMAML + LIL:
    15k of LIL pretraining (momentum 0.999, λ 0.1), then 15k of FOMAML (App. C, App. E). Table 4: ResNet-12 MAML
    ± LIL on miniImageNet, 10k iterations, α = 0.3, meta-lr 6e-4. Beside them, ANIL and BOIL after the same
    pretraining on miniImageNet (App. C leaves open whether its ANIL / BOIL + LIL were pretrained)."""
    config = load_params(REPO / "profiles" / "paper.yaml")
    variants: dict[tuple[str, str, str, int], list[int]] = {}
    for run in config.runs_of("lil2022"):
        backbone = MODELS.get(run.model_name).label_of(run.model)
        assert (run.ways, run.train.inner_steps, run.train.meta_batch) == (5, 3, 4)
        if backbone == "ResNet12":
            assert run.model.widths == (64, 128, 256, 512) and run.dataset == "miniimagenet"
            assert (run.train.iterations, run.train.inner_lr, run.train.meta_lr) == (10000, 0.3, 0.0006)
        else:
            assert (run.model.filters, run.model.downsample) == (64, "maxpool")
            assert (run.train.iterations, run.train.inner_lr, run.train.meta_lr) == (30000, 0.5, 0.001)
        options = run.algorithm_options
        name = ALGORITHMS.get(run.algorithm).variant_of(options, run.train.inner_params)
        variants.setdefault((backbone, run.dataset, name, run.shots), []).append(run.seed)
        assert options.phase_weight in (0.0, 0.1)
        if options.amplitude_weight:
            assert run.train.inner_params == "all" and options.amplitude_weight == {1: 0.01, 5: 0.1}[run.shots]
        if run.algorithm == "lil-pretrain":
            assert (options.pretrain_iterations, options.momentum, options.pretrain_weight) == (15000, 0.999, 0.1)
            assert options.phase_weight == options.amplitude_weight == 0
            # FOMAML after pretraining (Table 2), or second-order ANIL / BOIL (spec §6.4's open reading)
            assert options.first_order == (run.train.inner_params == "all")
    table2 = ("maml", "maml+lil", "fomaml", "fomaml+lil-pretrain", "anil", "anil+lil-phase", "boil", "boil+lil-phase")
    four = ("miniimagenet", "tieredimagenet", "cars", "cub")
    expected = {("Conv4", d, v, k) for d in four for v in table2 for k in (1, 5)}
    ablation = ("maml+lil-phase", "maml+lil-amplitude")
    expected |= {("Conv4", d, v, k) for d in ("miniimagenet", "cars") for v in ablation for k in (1, 5)}
    expected |= {("ResNet12", "miniimagenet", v, k) for v in ("maml", "maml+lil") for k in (1, 5)}
    pretrained = ("anil+lil-pretrain", "boil+lil-pretrain")
    expected |= {("Conv4", "miniimagenet", v, k) for v in pretrained for k in (1, 5)}
    assert variants == {key: [0, 1, 2] for key in expected}


def test_paper_profile_meta_tests_each_lil_run_where_its_tables_do():
    """Seed 004 Tables 1, 3, 4, 5: every run is meta-tested on its own test split and on those of the datasets its
    tables pair it with (meta-train → meta-test), on the cross-domain keys of its probe set."""
    config = load_params(REPO / "profiles" / "paper.yaml")
    study = config.studies["lil2022"]
    pairs = {
        "miniimagenet": {"tieredimagenet", "cars", "cub"},  # Tables 1, 3, 4, 5
        "tieredimagenet": {"miniimagenet"},  # Table 3
        "cars": {"miniimagenet", "tieredimagenet", "cub"},  # Tables 1, 3, 5
        "cub": {"cars"},  # Table 3
    }
    for run in config.runs_of("lil2022"):
        targets = {dataset for dataset, split in study.probe_targets(run) if split == "test"}
        assert targets == {run.dataset} | pairs[run.dataset], run.key


def test_paper_profile_has_the_thesis_settings():
    """Seed 000 §2.5-2.7: settings, hyper-parameters per dataset and shot count, 5 runs each."""
    config = load_params(REPO / "profiles" / "paper.yaml")
    study = config.studies["guiroy2019"]
    assert study.probe.tasks == 500 and study.probes["curvature"].tasks == 60
    settings: dict[tuple, list] = {}
    for run in config.runs_of("guiroy2019"):
        key = (run.algorithm, run.dataset, run.ways, run.shots, run.train.inner_steps)
        settings.setdefault(key, []).append(run)
        if run.algorithm == "finetune":
            batch, per_epoch = (64, 25) if run.shots == 1 else (128, 12)  # §2.7.3
            assert (run.algorithm_options.batch_size, run.train.checkpoint_every) == (batch, per_epoch)
            assert run.train.iterations == 100 * per_epoch
            continue
        mini = run.dataset == "miniimagenet"
        assert run.train.inner_lr == (0.01 if mini else 0.1)
        assert run.train.meta_batch == ({1: 4, 5: 2} if mini else {1: 16, 5: 8})[run.shots]
        assert (run.model.filters, run.model.downsample) == ((48, "maxpool") if mini else (64, "stride"))
        extended = (run.algorithm, run.dataset, run.shots, run.train.inner_steps) == ("fomaml", "miniimagenet", 1, 5)
        assert run.train.iterations == (100_000 if extended else 50_000)
        if run.algorithm == "regmaml":
            assert run.algorithm_options.gamma == 0.5 and (run.ways, run.shots) == (20, 1)
    assert all(sorted(r.seed for r in runs) == [0, 1, 2, 3, 4] for runs in settings.values())
    one_step = {k[:4] for k in settings if k[4] == 1}
    assert one_step == {  # Figs. 2.7, 2.11
        *((a, "miniimagenet", 5, s) for a in ("maml", "fomaml") for s in (1, 5)),
        ("maml", "omniglot", 20, 1),
        ("maml", "omniglot", 20, 5),
    }
    five_steps = {k[:4] for k in settings if k[4] == 5 and k[0] in ("maml", "fomaml")}
    assert five_steps == {
        *((a, "omniglot", w, s) for a in ("maml", "fomaml") for w in (5, 20) for s in (1, 5)),
        *((a, "miniimagenet", 5, s) for a in ("maml", "fomaml") for s in (1, 5)),
    }


def test_run_inherits_study_defaults_and_may_override(raw):
    raw["runs"][RUN]["train"] = {"inner_steps": 1}
    config = resolve(raw)
    run = config.runs[RUN]
    assert run.train.inner_steps == 1
    assert run.train.inner_lr == raw["studies"]["guiroy2019"]["defaults"]["train"]["inner_lr"]
    other = config.runs["guiroy2019-fomaml-omniglot-small-5w1s-s0"]
    assert other.train.inner_steps == raw["studies"]["guiroy2019"]["defaults"]["train"]["inner_steps"]


def test_unknown_key_is_named_with_a_suggestion(raw):
    raw["studies"]["guiroy2019"]["defaults"]["train"]["inner_lrr"] = 0.1
    message = error_of(raw)
    assert "studies.guiroy2019.defaults.train.inner_lrr is not a known parameter" in message
    assert "Did you mean 'inner_lr'" in message


def test_unknown_key_in_a_run_points_at_the_run(raw):
    raw["runs"][RUN]["train"] = {"meta_btach": 4}
    assert f"runs.{RUN}.train.meta_btach is not a known parameter" in error_of(raw)


def test_wrong_type_names_key_and_value(raw):
    raw["studies"]["guiroy2019"]["defaults"]["train"]["meta_batch"] = "lots"
    message = error_of(raw)
    assert "studies.guiroy2019.defaults.train.meta_batch = 'lots' is invalid" in message


def test_out_of_range_value(raw):
    raw["runs"][RUN]["train"] = {"inner_lr": -0.1}
    message = error_of(raw)
    assert f"runs.{RUN}.train.inner_lr = -0.1 is invalid" in message
    assert "greater than 0" in message


def test_more_ways_than_classes_in_a_split(raw):
    """242 characters × 1% = 2 validation characters, × 4 rotations = 8 classes: 20-way is impossible."""
    raw["datasets"]["omniglot-small"]["split"] = {"train": 0.9, "val": 0.01, "test": 0.09}
    raw["runs"][RUN]["ways"] = 20
    message = error_of(raw)
    assert f"runs.{RUN}.ways = 20 is impossible: the val split of dataset 'omniglot-small' has 8 classes" in message
    assert "lower ways to at most 8" in message


def test_shots_plus_queries_beyond_the_samples_per_class(raw):
    raw["runs"][RUN]["shots"] = 10
    raw["runs"][RUN]["queries"] = 15
    assert "shots + queries = 10 + 15 exceeds the 20 samples" in error_of(raw)


def test_run_key_must_start_with_its_study(raw):
    raw["runs"]["maml-run"] = copy.deepcopy(raw["runs"][RUN])
    assert "must start with its study name" in error_of(raw)


def test_run_must_name_its_identity(raw):
    del raw["runs"][RUN]["seed"]
    assert f"runs.{RUN} lacks seed" in error_of(raw)


def test_undeclared_dataset(raw):
    raw["runs"][RUN]["dataset"] = "omniglot"
    assert "is not declared under datasets" in error_of(raw)


def test_unknown_algorithm_and_model_get_suggestions(raw):
    raw["runs"][RUN]["algorithm"] = "mmal"
    assert "'mmal' is not a known algorithm. Did you mean 'maml'?" in error_of(raw)
    raw["runs"][RUN]["algorithm"] = "maml"
    raw["studies"]["guiroy2019"]["defaults"]["model"]["name"] = "convnett"
    assert "Did you mean 'convnet'?" in error_of(raw)


def test_an_unknown_study_is_named_with_the_known_ones(raw):
    raw["studies"]["guiroy2020"] = raw["studies"].pop("guiroy2019")
    message = error_of(raw)
    assert "studies.guiroy2020 = 'guiroy2020' is not a known study. Did you mean 'guiroy2019'?" in message
    assert "Known studies: ding2023, guiroy2019, lil2022, metaopt, sharpmaml." in message


def test_validating_params_imports_no_study_module():
    """Every stage validates params.yaml; a study's module (figures, claims, statistics) is imported
    only where the study is looked up, which keeps a second off each of the DAG's stages."""
    check = (
        "import sys\n"
        "from metaland.config import load_params\n"
        "load_params('params.yaml')\n"
        "heavy = [m for m in ('matplotlib', 'scipy.stats', 'pandas') if m in sys.modules]\n"
        "studies = [m for m in sys.modules if m.startswith('metaland.studies.')]\n"
        "assert not heavy and not studies, (heavy, studies)\n"
        "from metaland.studies import STUDIES\n"
        "assert STUDIES.get('metaopt').name == 'metaopt' and 'metaland.studies.ding2023' not in sys.modules\n"
        "assert [name for name, _ in STUDIES.items()] == STUDIES.names()\n"
    )
    subprocess.run([sys.executable, "-c", check], cwd=REPO, check=True)


def test_probe_options_are_validated_by_the_probe(raw):
    raw["studies"]["guiroy2019"]["probe"]["probes"]["curvature"]["tasks"] = 99
    assert "studies.guiroy2019.probe.probes.curvature: tasks = 99 exceeds the 6 fixed probe tasks" in error_of(raw)
    raw["studies"]["guiroy2019"]["probe"]["probes"]["curvature"] = {"tol": 2}
    assert "studies.guiroy2019.probe.probes.curvature.tol = 2 is invalid" in error_of(raw)


def test_checkpoints_fall_on_logging_boundaries(raw):
    raw["runs"][RUN]["train"] = {"checkpoint_every": 10, "log_every": 4}
    assert "checkpoint_every = 10 is not a multiple of train.log_every = 4" in error_of(raw)


def test_split_fractions_must_sum_to_one(raw):
    raw["datasets"]["omniglot-small"]["split"]["train"] = 0.7
    assert "datasets.omniglot-small" in error_of(raw)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("runs: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_trajectory_hash_ignores_only_resume_invariant_knobs(raw):
    base = resolve(raw).runs[RUN]
    dataset = resolve(raw).datasets["omniglot-small"]
    longer = copy.deepcopy(raw)
    longer["runs"][RUN]["train"] = {"iterations": 400}
    assert resolve(longer).runs[RUN].trajectory_hash(dataset) == base.trajectory_hash(dataset)
    changed = copy.deepcopy(raw)
    changed["runs"][RUN]["train"] = {"inner_lr": 0.2}
    assert resolve(changed).runs[RUN].trajectory_hash(dataset) != base.trajectory_hash(dataset)


@pytest.mark.parametrize("profile", ["ci", "default", "long", "paper"])
def test_metaopt_run_keys_name_their_model(profile):
    """The metaopt study reads a run's model from its key (metaland.studies.metaopt.model_of)."""
    from metaland.studies.metaopt import depth_of, model_of

    for run in load_params(REPO / "profiles" / f"{profile}.yaml").runs_of("metaopt"):
        assert run.key.split("-")[1] == run.algorithm
        if run.model_name == "cnn":
            assert depth_of(run.key) == run.model.blocks
        else:
            assert model_of(run.key) == ("linnet" if run.model.hidden else "lr")


def test_paper_profile_has_the_metaopt_settings():
    """Seed 003 A.1.1 / A.1.2: synthetic 1 step, SGD, meta-batch 1, 30k iterations and the table's lrs;
    Omniglot linear 5-way 1-shot, 2 steps, Adam, meta-batch 32, 60k iterations; CNNs 10-way 5-shot, 4 steps,
    64 filters, depths 1-4; CIFAR-FS 10-way 3-shot, 2 steps, 32 filters, depths 1-4; miniImageNet 10-way 1-shot,
    5 steps, Finn et al.'s net (SCNN with every optimizer, the 4-layer net with MAML)."""
    config = load_params(REPO / "profiles" / "paper.yaml")
    lrs = {}
    for run in config.runs_of("metaopt"):
        t = run.train
        if run.dataset == "synthetic-binary":
            assert (t.inner_steps, t.meta_batch, t.meta_optimizer, t.iterations) == (1, 1, "sgd", 30_000)
        elif run.model_name == "linear":
            assert (run.ways, run.shots, t.inner_steps, t.meta_batch, t.iterations) == (5, 1, 2, 32, 60_000)
        elif run.dataset == "omniglot":
            assert (run.ways, run.shots, t.inner_steps, run.model.filters, run.model.head) == (10, 5, 4, 64, "mean")
        elif run.dataset == "cifar-fs":  # A.1.2: 32 hidden units, no max-pooling, the spatial mean
            assert (run.ways, run.shots, t.inner_steps, run.model.filters, run.model.head) == (10, 3, 2, 32, "mean")
        else:  # miniImageNet: Finn et al.'s net, the 800-input head
            assert (run.dataset, run.ways, run.shots, t.inner_steps, t.meta_lr) == ("miniimagenet", 10, 1, 5, 0.0005)
            assert (run.model.filters, run.model.downsample, run.model.head, run.model.grid) == (
                32,
                "maxpool",
                "flatten",
                5,
            )
        lrs[run.key.rsplit("-", 1)[0]] = (t.meta_lr, t.inner_lr)
    assert lrs["metaopt-maml-lr-synthetic-binary-2w50s"] == (0.01, 0.5)
    assert lrs["metaopt-maml-linnet-synthetic-binary-2w50s"] == (1.9, 1.9)
    assert lrs["metaopt-klin-lr-synthetic-binary-2w50s"] == (3.33, 3.33)
    assert lrs["metaopt-kfc-lr-synthetic-binary-2w50s"] == (3.9, 3.9)
    assert lrs["metaopt-kfc-lr-omniglot-5w1s"] == (0.001, 0.01)
    assert lrs["metaopt-maml-cnn2-omniglot-10w5s"] == (0.003, 0.8)
    assert lrs["metaopt-maml-cnn2-cifar-fs-10w3s"] == (0.003, 0.7)
    assert lrs["metaopt-kfc-cnn4-cifar-fs-10w3s"] == (0.003, 0.5)
    assert lrs["metaopt-metacurvature-cnn2-miniimagenet-10w1s"] == (0.0005, 0.09)
    assert lrs["metaopt-kfc-cnn2-miniimagenet-10w1s"] == (0.0005, 0.005)
    for dataset in ("omniglot", "cifar-fs"):  # Table A1 (MAML and KFC at 1-4 layers) and Table 2 (SCNN)
        depths = sorted(k.split("-")[2] for k in lrs if k.split("-")[2].startswith("cnn") and f"-{dataset}-" in k)
        assert depths == sorted(["cnn1", "cnn2", "cnn3", "cnn4"] * 2 + ["cnn2"] * 2), dataset
    mini = sorted(k.split("-", 2)[1:] for k in lrs if "-miniimagenet-" in k)
    assert mini == sorted(
        [[a, "cnn2-miniimagenet-10w1s"] for a in ("maml", "metasgd", "metacurvature", "kfc")]
        + [["maml", "cnn4-miniimagenet-10w1s"]]
    )


DING = "ding2023-fomaml-conv4-noaug-omniglot-small-5w1s-s5"


def test_probe_sets_and_split_keys_resolve(raw):
    """A run selects a named probe set; `<probe>/<split>` keys add the splits the run's probes measure."""
    config = resolve(raw)
    run, study = config.runs[DING], config.studies["ding2023"]
    assert run.probe_set == "landscape_shots"
    assert "surface/train" in study.probes_for(run) and study.probe_splits(run) == ["test", "train"]
    plain = config.runs[RUN]
    assert config.studies["guiroy2019"].probes_for(plain) is config.studies["guiroy2019"].probes
    assert config.studies["guiroy2019"].probe_splits(plain) == ["test"]


def test_unknown_probe_set_is_named_with_the_known_ones(raw):
    raw["runs"][DING]["probe_set"] = "landscapes"
    message = error_of(raw)
    assert f"runs.{DING}.probe_set = 'landscapes' is not a probe set of study ding2023" in message
    assert "default, landscape, landscape_shots, transfer" in message


def test_probe_key_with_an_unknown_split_or_a_shadowing_set(raw):
    raw["studies"]["ding2023"]["probe"]["probes"]["adaptation/base"] = {}
    assert "studies.ding2023.probe.probes.adaptation/base: 'base' is not a split" in error_of(raw)
    del raw["studies"]["ding2023"]["probe"]["probes"]["adaptation/base"]
    raw["studies"]["ding2023"]["probe"]["probe_sets"]["default"] = {"adaptation": {}}
    assert "probe_sets.default would shadow probe.probes" in error_of(raw)
