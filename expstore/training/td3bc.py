"""TD3+BC (Fujimoto & Gu 2021): offline actor-critic, TD3 plus a behaviour-cloning term.

The actor maximises ``lambda * Q(s, pi(s)) - (pi(s) - a)^2`` with ``lambda = alpha / mean|Q|``,
which keeps the policy near the actions in the data; states are normalised with the dataset's
mean and standard deviation. Defaults are the paper's.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .sac import TwinQ, flat_obs, mlp, soft_update


@dataclass
class TD3BCConfig:
    hidden_units: int = 256
    learning_rate: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2  # times the action half-range
    noise_clip: float = 0.5  # times the action half-range
    policy_every: int = 2
    alpha: float = 2.5

    def to_dict(self) -> dict:
        return asdict(self)


class DeterministicActor(nn.Module):
    # Registered as buffers (they move with .to(device) and live in the state dict).
    action_scale: torch.Tensor
    action_bias: torch.Tensor

    def __init__(self, obs_units: int, action_low: np.ndarray, action_high: np.ndarray, hidden_units: int):
        super().__init__()
        low = torch.as_tensor(action_low, dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(action_high, dtype=torch.float32).reshape(-1)
        self.body = mlp(obs_units, low.numel(), hidden_units)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(obs)) * self.action_scale + self.action_bias


class TD3BC:
    """The agent. ``obs_mean``/``obs_std`` normalise observations (computed from the dataset)."""

    def __init__(self, obs_units: int, action_low: np.ndarray, action_high: np.ndarray,
                 obs_mean: np.ndarray, obs_std: np.ndarray, config: TD3BCConfig | None = None,
                 device: str | torch.device = "cpu"):
        self.config = config or TD3BCConfig()
        self.device = torch.device(device)
        hidden = self.config.hidden_units
        actor = DeterministicActor(obs_units, np.asarray(action_low), np.asarray(action_high), hidden)
        self.actor = actor.to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinQ(obs_units, self.actor.action_scale.numel(), hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=self.config.learning_rate)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=self.config.learning_rate)
        self.obs_mean = torch.as_tensor(obs_mean, dtype=torch.float32, device=self.device).reshape(1, -1)
        self.obs_std = torch.as_tensor(obs_std, dtype=torch.float32, device=self.device).reshape(1, -1)
        self.updates = 0

    def _normalise(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(1, -1)
        return self.actor(self._normalise(obs_tensor))[0].cpu().numpy().astype(np.float32)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One critic step, and every ``policy_every`` calls one actor step and target update."""
        obs = self._normalise(flat_obs(batch, "obs").to(self.device))
        next_obs = self._normalise(flat_obs(batch, "next_obs").to(self.device))
        action = batch["action"].reshape(obs.shape[0], -1).float().to(self.device)
        reward = batch["reward"].reshape(-1, 1).float().to(self.device)
        not_done = 1.0 - batch["terminated"].reshape(-1, 1).float().to(self.device)
        losses = {"critic_loss": self._update_critic(obs, action, reward, next_obs, not_done)}
        self.updates += 1
        if self.updates % self.config.policy_every == 0:
            losses["actor_loss"] = self._update_actor(obs, action)
            soft_update(self.critic_target, self.critic, self.config.tau)
            soft_update(self.actor_target, self.actor, self.config.tau)
        return losses

    def _update_critic(self, obs, action, reward, next_obs, not_done) -> float:
        scale = self.actor.action_scale
        with torch.no_grad():
            noise = (torch.randn_like(action) * self.config.policy_noise * scale).clamp(
                -self.config.noise_clip * scale, self.config.noise_clip * scale)
            low, high = self.actor.action_bias - scale, self.actor.action_bias + scale
            next_action = torch.max(torch.min(self.actor_target(next_obs) + noise, high), low)
            target = reward + self.config.gamma * not_done * torch.min(*self.critic_target(next_obs, next_action))
        q1, q2 = self.critic(obs, action)
        loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        return loss.item()

    def _update_actor(self, obs, action) -> float:
        policy_action = self.actor(obs)
        self.critic.requires_grad_(False)
        q_value = self.critic.q1(torch.cat([obs, policy_action], dim=-1))
        self.critic.requires_grad_(True)
        weight = self.config.alpha / q_value.abs().mean().detach()
        loss = -weight * q_value.mean() + F.mse_loss(policy_action, action)
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optimizer.step()
        return loss.item()

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "actor_target": self.actor_target.state_dict(),
                "critic": self.critic.state_dict(), "critic_target": self.critic_target.state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(),
                "obs_mean": self.obs_mean.cpu(), "obs_std": self.obs_std.cpu(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "actor_target", "critic", "critic_target", "actor_optimizer", "critic_optimizer"):
            getattr(self, name).load_state_dict(state[name])
        self.obs_mean = state["obs_mean"].to(self.device)
        self.obs_std = state["obs_std"].to(self.device)
        self.updates = int(state["updates"])
