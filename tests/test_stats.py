"""The seeds x images comparison on simulated outcomes where the truth is known: its 95 % interval covers the
truth about 95 % of the time, and identical recipes are called different in about 5 % of the draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import stats

IMAGES = 500
DRAWS = 600  # Monte-Carlo standard error of a 95 % coverage: sqrt(.95 * .05 / 600) = 0.9 points
MC_SE = math.sqrt(0.95 * 0.05 / DRAWS)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


class World:
    """Two training recipes A and B on F-MNIST-like data. Image i has a difficulty z_i shared by both recipes
    and a recipe-specific part v_i (images differ in which recipe gets them right); seed s shifts each recipe's
    logit by u_s (seed-to-seed variation); each (seed, image) outcome is then a Bernoulli draw. The truth is
    the expected accuracy difference over new seeds and new images."""

    def __init__(self, shift: float, seed_sd: float, rng: np.random.Generator) -> None:
        self.shift, self.seed_sd, self.rng = shift, seed_sd, rng
        m = 400_000  # the truth, by Monte Carlo over seeds and images (its error is ~0.02 points)
        z = rng.normal(0, 1.5, m)
        self.truth = 100 * float(np.mean(self._p(shift, z, m, m) - self._p(0.0, z, m, m)))

    def _p(self, mu: float, z: np.ndarray, seeds: int, images: int) -> np.ndarray:
        v = self.rng.normal(0, 0.8, images)
        u = self.rng.normal(0, self.seed_sd, seeds)
        if seeds == images:  # the truth: one seed per image draw, no grid
            return _sigmoid(mu + z + v + u)
        return _sigmoid(mu + z[None, :] + v[None, :] + u[:, None])

    def draw(self, seeds: int) -> tuple[np.ndarray, np.ndarray]:
        z = self.rng.normal(0, 1.5, IMAGES)
        a = self.rng.random((seeds, IMAGES)) < self._p(self.shift, z, seeds, IMAGES)
        b = self.rng.random((seeds, IMAGES)) < self._p(0.0, z, seeds, IMAGES)
        return a.astype(float), b.astype(float)


@pytest.mark.parametrize("seeds, seed_sd, shift", [(2, 0.4, 0.0), (3, 0.15, 0.2), (5, 0.4, 0.2)])
def test_seeds_x_images_interval_covers_the_truth(seeds: int, seed_sd: float, shift: float) -> None:
    world = World(shift, seed_sd, np.random.default_rng(seeds * 100 + int(10 * seed_sd)))
    covered = 0
    for _ in range(DRAWS):
        c = stats.seeds_x_images(*world.draw(seeds))
        covered += c.lo <= world.truth <= c.hi  # a refused draw (NaN interval) counts as a miss
    coverage = covered / DRAWS
    # about 95 %: within 3 Monte-Carlo standard errors below, and never far above (slightly conservative)
    assert 0.95 - 3 * MC_SE <= coverage <= 0.99, (coverage, world.truth)


@pytest.mark.parametrize("seeds, seed_sd", [(2, 0.4), (3, 0.15)])
def test_identical_recipes_are_rarely_called_different(seeds: int, seed_sd: float) -> None:
    world = World(0.0, seed_sd, np.random.default_rng(7 + seeds))
    verdicts = [stats.verdict(c.diff, c.p) for c in (stats.seeds_x_images(*world.draw(seeds)) for _ in range(DRAWS))]
    wrong = sum(v != "not significantly" for v in verdicts) / DRAWS
    assert wrong <= 0.05 + 3 * MC_SE, wrong


def test_the_t_test_over_seeds_misses_the_shared_images() -> None:
    """Why the image term: every seed sees the same images, so the image sampling is common to all seeds and a
    t-test over 5 seeds undercovers when seeds agree; the seeds x images interval does not."""
    world = World(0.2, 0.0, np.random.default_rng(11))
    seed_t = crossed = 0
    for _ in range(DRAWS):
        a, b = world.draw(5)
        t = stats.paired(a.mean(1), b.mean(1), scale=100)
        x = stats.seeds_x_images(a, b)
        seed_t += t.lo <= world.truth <= t.hi
        crossed += x.lo <= world.truth <= x.hi
    assert seed_t / DRAWS < 0.93, seed_t / DRAWS
    assert crossed / DRAWS >= 0.95 - 3 * MC_SE, crossed / DRAWS


def test_seeds_x_images_refusals_and_shared_differences() -> None:
    rng = np.random.default_rng(0)
    # The case: in each of 2 seeds, 30 images only A gets right and 23 only B: +1.4 pt in both seeds.
    # A t-test over the two seeds saw no variance and said p=1.6e-16; the images say it is noise.
    a = (rng.random((2, IMAGES)) < 0.6).astype(float)
    b = a.copy()
    for s in range(2):
        order = rng.permutation(IMAGES)
        a[s, order[:30]], b[s, order[:30]] = 1, 0
        a[s, order[30:53]], b[s, order[30:53]] = 0, 1
    c = stats.seeds_x_images(a, b)
    assert c.diff == pytest.approx(1.4) and math.isnan(c.p) and stats.verdict(c.diff, c.p) == "not significantly"
    assert c.refusal == "every seed gives the same difference (+1.4 pt): seed-to-seed variation cannot be estimated from 2 seeds"
    # one more seed that does not share it: a verdict, and not a certain one
    a3, b3 = np.vstack([a, (rng.random(IMAGES) < 0.6)]), np.vstack([b, (rng.random(IMAGES) < 0.6)])
    c3 = stats.seeds_x_images(a3, b3)
    assert c3.refusal == "" and c3.lo < 0 < c3.hi and c3.p > 0.05 and (c3.n, c3.images) == (3, IMAGES)
    assert (c.n, c.images, c.test) == (2, IMAGES, "seeds x images")
    assert stats.seeds_x_images(a[:1], b[:1]).refusal.startswith("too few seeds (n=1)")
    zeros = np.zeros((3, IMAGES))
    assert stats.seeds_x_images(zeros, zeros).refusal == "every model scores 0 % on every image and seed"
    ones = np.ones((3, IMAGES))
    assert stats.seeds_x_images(ones, zeros).refusal.startswith("every seed gives the same difference (+100.0 pt)")
    with pytest.raises(ValueError, match="aligned"):
        stats.seeds_x_images(zeros, zeros[:2])
    # a large, consistent difference is called, with a p the interval agrees with
    big = stats.seeds_x_images((rng.random((3, IMAGES)) < 0.7).astype(float), (rng.random((3, IMAGES)) < 0.4).astype(float))
    assert stats.verdict(big.diff, big.p) == "yes" and big.lo > 0 and big.p < 1e-3
