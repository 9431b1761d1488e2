"""Attacks and threat models: budget, box, loss ascent, mode restoration; agreement with torchattacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from medrobust.lightning_modules.attacks.attack_suite import AttackSpec, autoattack_components, build_attack
from medrobust.lightning_modules.attacks.pgd import PGD
from medrobust.lightning_modules.attacks.threat import Threat, parse_eps
from medrobust.lightning_modules.attacks.threat_model import L2Threat, LinfThreat
from medrobust.lightning_modules.attacks.trades import TradesAttack
from medrobust.lightning_modules.nets.modes import attack_mode


class TinyNet(nn.Module):
    """A small CNN with BatchNorm and dropout, so that mode handling matters; plus a frozen 'teacher' submodule."""

    def __init__(self, in_chans: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Dropout(0.2),
        )
        self.head = nn.Linear(128, num_classes)
        self.teacher = nn.Linear(4, 4).eval()  # deliberately in eval mode: must stay so

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def trained_net(in_chans: int, num_classes: int) -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet(in_chans, num_classes)
    x = torch.rand(64, in_chans, 16, 16)
    y = (x.mean((1, 2, 3)) * num_classes * 0.999 // (x.mean((1, 2, 3)).max() + 1e-6)).long().clamp(max=num_classes - 1)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.train()
    net.teacher.eval()
    return net


EPS = {"linf": 8 / 255, "l2": 0.5}


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("attack", ["fgsm", "pgd", "autoattack", "square"])
def test_attack_properties(attack: str, norm: str, in_chans: int) -> None:
    num_classes = 4 if attack == "autoattack" else 2
    net = trained_net(in_chans, num_classes)
    modes = {name: m.training for name, m in net.named_modules()}
    x = torch.rand(8, in_chans, 16, 16)
    y = torch.arange(8) % num_classes
    spec = AttackSpec(attack, Threat(norm, EPS[norm]), steps=5)
    fn = build_attack(spec, "multiclass", num_classes, autoattack_steps=5, square_queries=20)
    x_adv = fn(net, x, y)
    dist = Threat(norm, EPS[norm]).ball().distance(x_adv, x)
    assert (dist <= EPS[norm] + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and x_adv.shape == x.shape
    assert {name: m.training for name, m in net.named_modules()} == modes  # train stays train, eval stays eval
    assert not net.teacher.training
    net.eval()
    with torch.no_grad():
        clean_loss = F.cross_entropy(net(x), y, reduction="none")
        adv_loss = F.cross_entropy(net(x_adv), y, reduction="none")
        clean_ok = net(x).argmax(1) == y
        adv_ok = net(x_adv).argmax(1) == y
    if attack in ("fgsm", "pgd"):  # gradient ascent on the loss itself, up to the first iterate that fools
        assert (adv_loss[adv_ok] >= clean_loss[adv_ok] - 1e-4).all()
    assert adv_ok.sum() <= clean_ok.sum()  # AutoAttack keeps the clean image where it finds nothing


def test_attack_mode_restores_on_error() -> None:
    net = TinyNet().train()
    net.teacher.eval()
    with pytest.raises(RuntimeError), attack_mode(net):
        assert not net.training
        raise RuntimeError("boom")
    assert net.training and not net.teacher.training


def test_attacks_work_inside_inference_mode() -> None:
    net = trained_net(1, 2).eval()
    with torch.inference_mode():
        x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    with torch.inference_mode():
        x_adv = PGD(LinfThreat(8 / 255), steps=3).perturb(net, x, y)
    assert (x_adv - x).abs().max() > 0


def test_parse_and_label_eps() -> None:
    assert parse_eps("8/255") == pytest.approx(8 / 255) and parse_eps(0.5) == 0.5 and parse_eps("0.25") == 0.25
    assert Threat("linf", 8 / 255).label == "linf_8_255" and Threat("l2", 0.5).label == "l2_0.5"
    assert (
        Threat.parse("linf", "8/255") == Threat("linf", 8 / 255) and str(Threat.parse("linf", "8/255")) == "L-inf 8/255"
    )
    for bad, match in [("8//255", "fraction like"), ("-1/255", ">= 0"), ("nan", ">= 0"), (True, "not a number")]:
        with pytest.raises(ValueError, match=match):
            parse_eps(bad)
    with pytest.raises(ValueError, match="Unknown norm"):
        Threat("l1", 0.1)
    with pytest.raises(ValueError, match="not a threat label"):
        Threat.from_label("linf")


def test_autoattack_components_follow_class_count() -> None:
    assert autoattack_components(2) == ["apgd-ce", "fab", "square"]
    assert autoattack_components(3) == ["apgd-ce", "apgd-dlr", "fab", "square"]
    assert autoattack_components(9) == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_autoattack_on_three_classes() -> None:
    net = trained_net(1, 3)
    x, y = torch.rand(6, 1, 16, 16), torch.arange(6) % 3
    fn = build_attack(
        AttackSpec("autoattack", Threat("linf", 8 / 255)), "multiclass", 3, autoattack_steps=3, square_queries=5
    )
    assert (fn(net, x, y) - x).abs().max() <= 8 / 255 + 1e-6


def test_multilabel_pgd_uses_bce() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 5))
    x, y = torch.rand(4, 1, 16, 16), (torch.rand(4, 5) > 0.5).float()
    x_adv = build_attack(AttackSpec("pgd", Threat("linf", 8 / 255), 5), "multilabel", 5)(net, x, y)
    bce = lambda z: F.binary_cross_entropy_with_logits(net(z), y)  # noqa: E731
    assert bce(x_adv) > bce(x)
    with pytest.raises(ValueError, match="multi-label task can be attacked with fgsm and pgd"):
        build_attack(AttackSpec("autoattack", Threat("linf", 8 / 255)), "multilabel", 5)


# ------------------------------------------------------------------------------ agreement with torchattacks
def _same_start(ours, theirs, net, x, y) -> None:
    torch.manual_seed(123)
    a = ours(net, x, y)
    torch.manual_seed(123)
    b = theirs(x, y)
    assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


@pytest.mark.parametrize("in_chans", [1, 3])
def test_pgd_linf_matches_torchattacks(in_chans: int) -> None:
    net = trained_net(in_chans, 2).eval()
    x, y = torch.rand(16, in_chans, 16, 16), torch.arange(16) % 2
    ours = PGD(LinfThreat(8 / 255), steps=10, alpha=2 / 255, random_start=True)
    _same_start(ours.perturb, torchattacks.PGD(net, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True), net, x, y)


def test_pgd_l2_matches_torchattacks() -> None:
    net = trained_net(3, 2).eval()
    x, y = torch.rand(16, 3, 16, 16), torch.arange(16) % 2
    ours = PGD(L2Threat(0.5), steps=10, alpha=0.1, random_start=True)
    theirs = torchattacks.PGDL2(net, eps=0.5, alpha=0.1, steps=10, random_start=True)
    _same_start(ours.perturb, theirs, net, x, y)


def test_fgsm_matches_torchattacks() -> None:
    net = trained_net(1, 2).eval()
    x, y = torch.rand(16, 1, 16, 16), torch.arange(16) % 2
    ours = build_attack(AttackSpec("fgsm", Threat("linf", 4 / 255)), "multiclass", 2)(net, x, y)
    theirs = torchattacks.FGSM(net, eps=4 / 255)(x, y)
    with torch.no_grad():
        clean_ok = net(x).argmax(1) == y
    assert 0 < int(clean_ok.sum()) < len(x)
    assert torch.allclose(ours[clean_ok], theirs[clean_ok], atol=1e-6)
    assert torch.equal(ours[~clean_ok], x[~clean_ok])  # already fooled at the start: the image itself is kept


def test_fgsm_rs_matches_torchattacks_ffgsm() -> None:
    net = trained_net(1, 2).eval()
    x, y = torch.rand(16, 1, 16, 16), torch.arange(16) % 2
    pgd = PGD(LinfThreat(8 / 255), steps=1, alpha=10 / 255, random_start=True)

    def ours(net, x, y):  # FFGSM draws its start as randn_like(x).uniform_(): give ours that same start
        return pgd.perturb(net, x, y, x_init=(x + torch.randn_like(x).uniform_(-8 / 255, 8 / 255)).clamp(0, 1))

    _same_start(ours, torchattacks.FFGSM(net, eps=8 / 255, alpha=10 / 255), net, x, y)


def test_trades_inner_matches_torchattacks_tpgd() -> None:
    net = trained_net(1, 2)  # in training mode, with BatchNorm: TradesAttack compares in eval mode, as TPGD does
    x = torch.rand(16, 1, 16, 16)
    ours = TradesAttack(LinfThreat(8 / 255), steps=7, alpha=2 / 255)
    theirs = torchattacks.TPGD(net, eps=8 / 255, alpha=2 / 255, steps=7)
    _same_start(lambda net, x, y: ours.perturb(net, x), lambda x, y: theirs(x, y), net, x, None)
    assert net.training and net.features[1].training  # modes restored


def test_trades_inner_loss_is_zero_at_the_clean_input_on_a_batchnorm_network() -> None:
    """Issue 9.3: the KL target f(x) and f(x') are both taken in eval mode on the same input, so the inner objective
    is 0 at x' = x; a target from the training-mode forward (batch statistics) made it far from 0."""
    net = trained_net(1, 2)
    x = torch.rand(16, 1, 16, 16)
    assert net.training
    target = TradesAttack.target(net, x)
    assert float(TradesAttack.inner_loss(net, x, target)) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        train_mode_target = F.softmax(net(x), dim=1)  # what the old code compared with
    assert float(TradesAttack.inner_loss(net, x, train_mode_target)) > 1e-3
    assert net.training  # every mode restored


def test_threat_labels_say_what_the_budget_is() -> None:
    """Issue 9.13: L2 budgets are plain lengths, never /255 fractions; labels round-trip."""
    assert Threat("l2", 1.0).label == "l2_1" and Threat("l2", 2 / 255).label == f"l2_{2 / 255:g}"
    assert Threat("linf", 1.0).label == "linf_255_255" and Threat("linf", 0.1).label == "linf_0.1"
    for norm, eps in [("linf", 8 / 255), ("linf", 0.1), ("l2", 0.5), ("l2", 1.0)]:
        back = Threat.from_label(Threat(norm, eps).label)
        assert back.norm == norm and back.eps == pytest.approx(eps)
    assert sorted([Threat("linf", 8 / 255), Threat("l2", 0.5), Threat("linf", 1 / 255)])[0] == Threat("l2", 0.5)
    assert AttackSpec("pgd", Threat("l2", 1.0), 20).label == "pgd20/l2_1"
    assert AttackSpec("pgd", Threat("linf", 8 / 255), 20, restarts=5).label == "pgd20_r5/linf_8_255"


class BucketNet(nn.Module):
    """Three classes, piecewise constant in the input (zero gradient, so PGD stays at its random start): the sign of
    the start's mean perturbation picks one of two outputs. Bucket 0: correct but high loss (p_y = 0.4); bucket 1:
    wrong with a lower loss (p_y = 0.45 < p_2 = 0.55)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.log(torch.tensor([[0.40, 0.35, 0.25], [0.45, 0.0001, 0.55]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bucket = ((x - 0.5).flatten(1).mean(1) > 0).long()
        return self.table[bucket] + 0 * x.flatten(1).sum(1, keepdim=True)


def test_pgd_restarts_keep_a_restart_that_fools_the_model() -> None:
    """Issue 9.4: with 3 classes the highest-loss restart can still be correct; per sample, any restart that fools
    the model is kept (AutoAttack's rule). With two restarts each landing in either bucket with probability 1/2, a
    sample stays correct only if both restarts do: accuracy ~1/4. Keeping the highest loss gave ~3/4."""
    torch.manual_seed(0)
    net, x = BucketNet(), torch.full((400, 1, 4, 4), 0.5)
    y = torch.zeros(400, dtype=torch.long)
    x_adv = PGD(LinfThreat(8 / 255), steps=2, restarts=2, random_start=True).perturb(net, x, y)
    accuracy = float((net(x_adv).argmax(1) == y).float().mean())
    assert 0.15 < accuracy < 0.35, accuracy
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    one = PGD(LinfThreat(8 / 255), steps=2, restarts=1, random_start=True).perturb(net, x, y)
    assert float((net(one).argmax(1) == y).float().mean()) > accuracy  # more restarts never help the model


def test_eval_mode_restores_each_submodule() -> None:
    from medrobust.lightning_modules.nets.modes import eval_mode

    net = TinyNet().train()
    net.teacher.eval()
    with eval_mode(net):
        assert not net.training and not torch.is_grad_enabled()
    assert net.training and net.features.training and not net.teacher.training


class SineNet(nn.Module):
    """Two logits whose margin oscillates with the image's mean: sign-gradient steps of 0.05 climb to a crest where
    the model is fooled, then overshoot into a trough where it is not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).mean(1)
        return torch.stack([torch.zeros_like(s), 3 * torch.sin(40 * s) - 1], 1)


def test_evaluation_pgd_keeps_the_first_iterate_that_fools_the_model() -> None:
    """Issue 25.1: the last iterate can undo a success (here on 18 of 41 images), so robust accuracy from it is an
    upper bound of unknown slack. The evaluation's PGD and FGSM keep, per sample, the first iterate that fools."""
    from medrobust.lightning_modules.metrics.confusion import errors

    net, x = SineNet(), torch.linspace(0.3, 0.7, 41).view(-1, 1, 1, 1)
    y = torch.zeros(41, dtype=torch.long)
    settings = {"steps": 10, "alpha": 0.05, "random_start": False}
    last = PGD(LinfThreat(0.1), **settings).perturb(net, x, y)
    first = PGD(LinfThreat(0.1), **settings, keep_first_success=True).perturb(net, x, y)
    fooled_last, fooled_first = errors(net(last), y, "multiclass"), errors(net(first), y, "multiclass")
    assert int(fooled_last.sum()) < 41 and int(fooled_first.sum()) == 41  # never fewer, here all
    assert (first - x).abs().max() <= 0.1 + 1e-6
    spec = AttackSpec("pgd", Threat("linf", 0.1), steps=10)
    suite = build_attack(spec, "multiclass", 2, random_start=False)(net, x, y)
    assert int(errors(net(suite), y, "multiclass").sum()) == 41


def test_random_starts_are_the_same_per_image_however_the_split_is_batched() -> None:
    """Issue 25.1: PGD starts at a random point of the ball by default, drawn per image from the seed and its global
    id, so one process and two (or another batch size) attack each image from the same start."""
    from medrobust.lightning_modules.attacks.threat_model import seeded_starts

    x, ids = torch.rand(6, 1, 4, 4), torch.arange(10, 16)
    for threat in (LinfThreat(8 / 255), L2Threat(0.5)):
        whole = seeded_starts(threat, x, ids, seed=3)
        halves = torch.cat([seeded_starts(threat, x[:2], ids[:2], 3), seeded_starts(threat, x[2:], ids[2:], 3)])
        assert torch.equal(whole, halves) and not torch.equal(whole, x)
        assert not torch.equal(whole, seeded_starts(threat, x, ids, seed=4))
        assert float(threat.distance(whole, x).max()) <= threat.eps + 1e-6
    spec = AttackSpec("pgd", Threat("linf", 8 / 255), steps=3)
    attack = build_attack(spec, "multiclass", 2, seed=0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:2] = 1 - y[:2]  # two misclassified already
    together = attack(net, x, y, ids)
    apart = torch.cat([attack(net, x[:3], y[:3], ids[:3]), attack(net, x[3:], y[3:], ids[3:])])
    assert torch.allclose(together, apart, atol=1e-6)
    with torch.no_grad():
        wrong = net(x).argmax(1) != y
    assert int(wrong.sum()) == 2 and torch.equal(together[wrong], x[wrong])  # misclassified already: kept
