"""``Text``: the one form prompt conditioning takes between the backbone's encoders and every UNet call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from einops import repeat


@dataclass
class Text:
    """Per-prompt text conditioning: (B, L, D) hidden states (the UNet's ``encoder_hidden_states``) plus
    SDXL's added kwargs of (B, ...) (``text_embeds`` (B, P), ``time_ids`` (B, 6)); None for other families."""

    hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None = None

    def per_view(self, views: int) -> Text:
        added = None if self.added_cond_kwargs is None else {
            key: value.repeat_interleave(views, dim=0) for key, value in self.added_cond_kwargs.items()}
        return Text(repeat(self.hidden_states, "b l d -> (b v) l d", v=views), added)

    @staticmethod
    def cat(texts: Sequence[Text]) -> Text:
        added = None if texts[0].added_cond_kwargs is None else {
            key: torch.cat([t.added_cond_kwargs[key] for t in texts]) for key in texts[0].added_cond_kwargs}
        return Text(torch.cat([t.hidden_states for t in texts]), added)

    def __getitem__(self, index: slice) -> Text:
        added = None if self.added_cond_kwargs is None else {k: v[index] for k, v in self.added_cond_kwargs.items()}
        return Text(self.hidden_states[index], added)

    def float(self) -> Text:
        """fp32 hidden states (the adapters' dtype); the added kwargs keep the backbone's."""
        return replace(self, hidden_states=self.hidden_states.float())
