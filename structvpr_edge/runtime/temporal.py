"""Temporal filter for a moving vehicle: a discrete Bayes filter over map places.

The state is a belief over map entries, kept sparse on the candidates retrieved for recent
frames. Motion model: from place i the vehicle moves to any place within ``max_move_m`` metres
(uniform: i's belief is split evenly among the reachable candidates, so a place mapped many times
over gains nothing), elsewhere with a small ``teleport`` probability so the filter recovers from
a wrong lock. Observation: ``exp((similarity - best) / temperature)`` over the frame's candidates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass
class TemporalConfig:
    """Settings of the temporal filter (EdgeVPR(temporal=TemporalConfig(...))).

    max_move_m: the farthest, in metres, the vehicle moves between two frames
    temperature: how sharply a frame's similarities weigh its candidates (smaller: sharper)
    teleport: probability of a jump to a place out of reach, in (0, 1): lets the filter recover from a wrong lock
    """

    max_move_m: float = 25.0
    temperature: float = 0.02
    teleport: float = 1e-3  # > 0: with none, a belief with no reachable candidate would be 0/0

    def __post_init__(self) -> None:
        for name in ("max_move_m", "temperature", "teleport"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"TemporalConfig.{name} must be a finite number > 0, got {value!r}")
        if self.teleport >= 1:
            raise ConfigError(f"TemporalConfig.teleport must be < 1, got {self.teleport}")


class PlaceFilter:
    """The belief over map rows. Each update is given the map's current poses, so it follows a map
    that grows (``add``) under it; it keeps the poses of the rows it believes in, and starts over
    when the map no longer holds them there (a merged save renumbers rows)."""

    def __init__(self, config: TemporalConfig | None = None) -> None:
        self.config = config or TemporalConfig()
        self.rows = np.zeros(0, dtype=np.int64)
        self.belief = np.zeros(0)
        self.poses = np.zeros((0, 2))  # the map's poses at ``rows`` when they were believed in

    def same_map(self, poses: np.ndarray) -> bool:
        """Whether the map's rows still name the places this (non-empty) belief is about."""
        return int(self.rows.max()) < len(poses) and np.array_equal(poses[self.rows], self.poses, equal_nan=True)

    def update(self, rows: np.ndarray, scores: np.ndarray, poses: np.ndarray) -> np.ndarray:
        """Fold in one frame's candidates (best first) given the map's (N, 2+) poses; returns the posterior over ``rows``."""
        valid = rows >= 0
        rows = rows[valid]
        scores = scores[valid].astype(np.float64)  # float32 would turn a small temperature into 0/0
        likelihood = np.exp((scores - scores.max()) / self.config.temperature)
        here = poses[rows]
        if len(self.rows) and self.same_map(poses):  # then self.poses is what the map holds at self.rows
            distance = np.linalg.norm(here[:, None, :2] - self.poses[None, :, :2], axis=2)
            reachable = (distance <= self.config.max_move_m).astype(np.float64)
            moves = reachable / np.maximum(reachable.sum(axis=0), 1)  # each previous row's belief split among its reachable candidates
            prior = moves @ self.belief + self.config.teleport
        else:
            prior = np.ones(len(rows))
        posterior = prior * likelihood
        posterior /= posterior.sum()
        self.rows, self.belief, self.poses = rows, posterior, here
        return posterior

    @property
    def choice(self) -> int:
        """The map row the belief holds most likely (after an update)."""
        return int(self.rows[int(np.argmax(self.belief))])
