"""The one training loop: schedule, EMA, logging, and checkpoints that resume to the same bytes."""

import json

import pytest
import torch

from recaption.models.schedule import OptimConfig
from recaption.models.training import Checkpoints, Evaluation, Micro, epoch_batch, fit

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0])


class Crash(Exception):
    pass


def config(**overrides) -> OptimConfig:
    fields = dict(steps=20, batch_size=8, lr=0.05, warmup_steps=3, weight_decay=0.01,
                  grad_clip=1.0)  # fmt: skip
    return OptimConfig(**{**fields, **overrides})


def model(seed: int = 0, dropout: float = 0.2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Dropout(dropout), torch.nn.Linear(8, 1)
    )


def train(net, cfg=None, log=None, checkpoints=None, ema_decay=0.9, **kwargs):
    cfg = cfg or config()

    def step_loss(step, gen, micro):
        idx = epoch_batch(len(X), cfg.batch_size, step, seed=0)
        noise = 0.01 * torch.randn(len(idx), generator=gen)  # drawn for the whole batch
        mine = micro.take(range(len(idx)))
        error = net(X[idx][mine]).squeeze(1) - Y[idx][mine] - noise[mine]
        return {"loss": error.pow(2).mean(), "abs": error.abs().mean()}

    return fit(dict(net.named_parameters()), step_loss, cfg, seed=0, ema_decay=ema_decay,
               checkpoints=checkpoints, log_step=log, log_every=2, **kwargs)  # fmt: skip


def test_training_lowers_the_loss_and_logs_every_few_steps():
    logged = []
    result = train(model(), log=lambda s, m: logged.append((s, m["loss"])))
    assert [s for s, _ in logged] == list(range(2, 21, 2))
    assert logged[-1][1] < 0.5 * logged[0][1]
    assert result.steps == 20 and result.resumed_from == 0


def test_a_killed_run_resumes_to_the_weights_and_logs_of_an_uninterrupted_one(tmp_path):
    clean, clean_log = model(), []
    clean_result = train(clean, log=lambda *s: clean_log.append(s))

    def crash_at_14(step, metrics):
        if step >= 14:
            raise Crash

    folder = Checkpoints(tmp_path / "ck", every=5)
    with pytest.raises(Crash):
        train(model(), log=crash_at_14, checkpoints=folder)
    resumed, resumed_log = model(seed=1), []  # other weights: the checkpoint's replace them
    result = train(resumed, log=lambda *s: resumed_log.append(s), checkpoints=folder)
    assert result.resumed_from == 10
    for (name, a), b in zip(clean.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the EMA weights, dropout's draws included
    # What it logs and returns, in the same order too (a dvclive summary keeps the order).
    assert [(s, list(m.items())) for s, m in resumed_log] == [
        (s, list(m.items())) for s, m in clean_log
    ]
    assert list(result.metrics.items()) == list(clean_result.metrics.items())


def test_a_checkpoint_from_other_settings_is_ignored(tmp_path):
    folder = Checkpoints(tmp_path / "ck", every=5)
    train(model(), checkpoints=folder)
    assert json.loads((folder.folder / "state.json").read_text())["step"] == 20
    result = train(model(), cfg=config(lr=0.01), checkpoints=folder)
    assert result.resumed_from == 0


def test_evaluations_join_the_logged_metrics_every_few_steps_and_at_the_last():
    logged = []
    evaluation = Evaluation(lambda step: {"val": float(step)}, every=4)
    train(model(), cfg=config(steps=10), log=lambda s, m: logged.append((s, m)),
          evaluation=evaluation)  # fmt: skip
    expected = [(2, None), (4, 4.0), (6, None), (8, 8.0), (10, 10.0)]
    assert [(s, m.get("val")) for s, m in logged] == expected


def test_epoch_batches_cover_every_row_once_per_epoch():
    batches = [epoch_batch(10, 3, step, seed=5) for step in range(6)]
    assert sorted(sum(batches[:3], [])) != list(range(10))  # 3 of 3: one row left out
    assert len(set(sum(batches[:3], []))) == 9
    assert batches[:3] != batches[3:]  # each epoch its own order
    assert epoch_batch(4, 8, 0, seed=5) == epoch_batch(4, 4, 0, seed=5)  # capped at n


def test_the_best_evaluated_weights_are_kept_and_a_stale_run_stops_early(tmp_path):
    net = model()
    scores = iter([5.0, 3.0, 1.0, 2.0, 4.0, 6.0, 7.0])  # at steps 0, 2, 4, 6, 8, 10, 12
    kept = {}

    def run(step):
        if step == 4:
            kept.update({n: p.detach().clone() for n, p in net.named_parameters()})
        return {"val": next(scores)}

    evaluation = Evaluation(run, every=2, best="val", patience=3)
    result = train(net, cfg=config(steps=20), evaluation=evaluation, ema_decay=None)
    assert result.steps == 10 and result.best == {"step": 4, "value": 1.0}
    assert all(torch.equal(p, kept[n]) for n, p in net.named_parameters())


def test_a_killed_run_that_keeps_its_best_resumes_to_the_same_weights(tmp_path):
    def evaluation():  # lowest at step 6, then worse: the run stops at step 12
        return Evaluation(lambda step: {"val": abs(step - 6.0)}, every=3, best="val", patience=2)

    clean = model()
    clean_result = train(clean, cfg=config(steps=20), evaluation=evaluation())

    def crash_at_10(step, metrics):
        if step >= 10:
            raise Crash

    folder = Checkpoints(tmp_path / "ck", every=4)
    with pytest.raises(Crash):
        train(model(), cfg=config(steps=20), evaluation=evaluation(), log=crash_at_10,
              checkpoints=folder)  # fmt: skip
    resumed = model(seed=1)
    result = train(resumed, cfg=config(steps=20), evaluation=evaluation(),
                   checkpoints=folder)  # fmt: skip
    assert result.resumed_from == 8 and result.steps == clean_result.steps == 12
    assert result.best == clean_result.best == {"step": 6, "value": 0.0}
    # Killed after it stopped (its last checkpoint is of the stop): it stops there again.
    again = model(seed=2)
    result = train(again, cfg=config(steps=20), evaluation=evaluation(), checkpoints=folder)
    assert result.resumed_from == result.steps == 12 and result.best == clean_result.best
    for net in (resumed, again):
        for (name, a), b in zip(clean.state_dict().items(), net.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_a_config_takes_its_fields_from_a_params_section_and_the_rest_from_values():
    from recaption.models.captioner_train import CaptionTrainConfig
    from recaption.models.generator_train import GeneratorTrainConfig
    from recaption.params import Params

    section = Params().generator  # holds model, vocab_size, device: not the loop's
    config = GeneratorTrainConfig.of(section, seed=7, precision="fp32", steps=3)
    assert (config.seed, config.precision, config.steps) == (7, "fp32", 3)
    assert (config.lr, config.ema_decay, config.edge_weight) == (
        section.lr,
        section.ema_decay,
        section.edge_weight,
    )
    stage = Params().captioner.stage1  # holds no seed: it must be given
    with pytest.raises(TypeError, match="seed"):
        CaptionTrainConfig.of(stage, precision="fp32")


def test_accumulated_micro_batches_train_the_weights_the_whole_batch_does():
    whole, micro, logs = model(dropout=0.0), model(dropout=0.0), ([], [])
    train(whole, log=lambda s, m: logs[0].append(m["loss"]))
    train(micro, cfg=config(grad_accumulation=4), log=lambda s, m: logs[1].append(m["loss"]))
    for (name, a), b in zip(whole.state_dict().items(), micro.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)  # sums reordered
    assert logs[1] == pytest.approx(logs[0], rel=1e-5)  # the step's loss, logged per step


def test_a_micro_batch_count_that_does_not_divide_the_batch_is_refused():
    with pytest.raises(ValueError, match="batch_size 8 does not split into grad_accumulation 3"):
        train(model(), cfg=config(grad_accumulation=3))
    assert Micro(1, 2).take([10, 11, 12, 13]) == [12, 13]
    with pytest.raises(ValueError, match="multiple of grad_accumulation"):
        Micro(0, 2).take([1, 2, 3])
