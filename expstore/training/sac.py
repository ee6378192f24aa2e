"""Soft Actor-Critic (Haarnoja et al. 2018) for continuous actions, with automatic entropy tuning.

One clear module: the networks, the update, acting, and a state dict for checkpoints. The
defaults are the standard ones (256x256 MLPs, Adam 3e-4, batch 256, gamma 0.99, tau 0.005,
target entropy -|A|), which solve Pendulum-v1 in well under 20,000 environment steps.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class SACConfig:
    """Hyper-parameters of the agent (the trainer adds its own: steps, seeds, schedules)."""

    hidden_units: int = 256
    learning_rate: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    initial_alpha: float = 1.0
    autotune_alpha: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(in_units: int, out_units: int, hidden_units: int) -> nn.Sequential:
    """Two hidden ReLU layers."""
    return nn.Sequential(nn.Linear(in_units, hidden_units), nn.ReLU(),
                         nn.Linear(hidden_units, hidden_units), nn.ReLU(),
                         nn.Linear(hidden_units, out_units))


class SquashedGaussianActor(nn.Module):
    """A tanh-squashed Gaussian policy, rescaled to the action box."""

    # Registered as buffers (they move with .to(device) and live in the state dict).
    action_scale: torch.Tensor
    action_bias: torch.Tensor

    def __init__(self, obs_units: int, action_low: np.ndarray, action_high: np.ndarray, hidden_units: int):
        super().__init__()
        action_units = int(np.prod(action_low.shape))
        self.body = mlp(obs_units, 2 * action_units, hidden_units)
        low = torch.as_tensor(action_low, dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(action_high, dtype=torch.float32).reshape(-1)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A sampled action (reparameterised) and its log-probability, shape (batch, 1)."""
        mean, log_std = self.body(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        normal = torch.distributions.Normal(mean, log_std.exp())
        raw = normal.rsample()
        squashed = torch.tanh(raw)
        # Change of variables for tanh and the affine rescale (the paper's appendix C).
        log_prob = normal.log_prob(raw) - torch.log(self.action_scale * (1 - squashed.pow(2)) + 1e-6)
        return squashed * self.action_scale + self.action_bias, log_prob.sum(-1, keepdim=True)

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self.body(obs).chunk(2, dim=-1)
        return torch.tanh(mean) * self.action_scale + self.action_bias


class TwinQ(nn.Module):
    """Two independent Q networks; the minimum of the two fights over-estimation."""

    def __init__(self, obs_units: int, action_units: int, hidden_units: int):
        super().__init__()
        self.q1 = mlp(obs_units + action_units, 1, hidden_units)
        self.q2 = mlp(obs_units + action_units, 1, hidden_units)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joint = torch.cat([obs, action], dim=-1)
        return self.q1(joint), self.q2(joint)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- (1 - tau) target + tau source."""
    with torch.no_grad():
        for target_param, param in zip(target.parameters(), source.parameters(), strict=True):
            target_param.lerp_(param, tau)


def flat_obs(batch: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """Observations as float32 (batch, features)."""
    values = batch[key]
    return values.reshape(values.shape[0], -1).float()


class SAC:
    """The agent: acting, one gradient update per call, and a checkpointable state.

    Args:
        obs_units: flattened observation size.
        action_low, action_high: the bounds of the (Box) action space.
        config: hyper-parameters.
        device: where the networks live.
    """

    def __init__(self, obs_units: int, action_low: np.ndarray, action_high: np.ndarray,
                 config: SACConfig | None = None, device: str | torch.device = "cpu"):
        self.config = config or SACConfig()
        self.device = torch.device(device)
        hidden = self.config.hidden_units
        action_units = int(np.prod(np.shape(action_low)))
        self.actor = SquashedGaussianActor(obs_units, np.asarray(action_low), np.asarray(action_high),
                                           hidden).to(self.device)
        self.critic = TwinQ(obs_units, action_units, hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(float(np.log(self.config.initial_alpha)), device=self.device,
                                      requires_grad=True)
        self.target_entropy = -float(action_units)
        lr = self.config.learning_rate
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=lr)
        self.updates = 0

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """The action for one observation, as a float32 numpy array of the action's shape."""
        obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(1, -1)
        action = self.actor.mean_action(obs_tensor) if deterministic else self.actor(obs_tensor)[0]
        return action[0].cpu().numpy().astype(np.float32)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One critic, actor and temperature step on a batch (obs, action, reward, next_obs,
        terminated); returns the losses as floats."""
        obs, next_obs = flat_obs(batch, "obs"), flat_obs(batch, "next_obs")
        action = batch["action"].reshape(obs.shape[0], -1).float()
        reward = batch["reward"].reshape(-1, 1).float()
        # Truncation (time limit) is not a terminal state: only `terminated` stops bootstrapping.
        not_done = 1.0 - batch["terminated"].reshape(-1, 1).float()
        critic_loss = self._update_critic(obs, action, reward, next_obs, not_done)
        actor_loss, log_prob = self._update_actor(obs)
        alpha_loss = self._update_alpha(log_prob)
        soft_update(self.critic_target, self.critic, self.config.tau)
        self.updates += 1
        return {"critic_loss": critic_loss, "actor_loss": actor_loss, "alpha_loss": alpha_loss,
                "alpha": float(self.alpha)}

    def _update_critic(self, obs, action, reward, next_obs, not_done) -> float:
        with torch.no_grad():
            next_action, next_log_prob = self.actor(next_obs)
            target_q = torch.min(*self.critic_target(next_obs, next_action)) - self.alpha * next_log_prob
            target = reward + self.config.gamma * not_done * target_q
        q1, q2 = self.critic(obs, action)
        loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        return loss.item()

    def _update_actor(self, obs) -> tuple[float, torch.Tensor]:
        action, log_prob = self.actor(obs)
        self.critic.requires_grad_(False)  # the actor's loss must not move the critic
        q_value = torch.min(*self.critic(obs, action))
        self.critic.requires_grad_(True)
        loss = (self.alpha * log_prob - q_value).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optimizer.step()
        return loss.item(), log_prob.detach()

    def _update_alpha(self, log_prob: torch.Tensor) -> float:
        if not self.config.autotune_alpha:
            return 0.0
        loss = -(self.log_alpha * (log_prob + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.alpha_optimizer.step()
        return loss.item()

    def state_dict(self) -> dict:
        """Everything needed to continue training bit for bit (networks, optimisers, counters)."""
        return {
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(), "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.updates = int(state["updates"])
