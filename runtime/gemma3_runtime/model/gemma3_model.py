"""`Gemma3Model`: megatron-core's GPTModel with Gemma's embedding scale, dual RoPE, masks and a trimmed, padded
vocabulary.

forward(input_ids, position_ids, attention_mask=None, labels=None, kv_cache=None, segment_ids=None):
- returns logits [b, s, V_hf] on the last pipeline stage (hidden states [s, b, D] on other stages);
- with `labels` [b, s]: per-token fp32 cross-entropy [b, s] computed vocab-parallel with the padded vocab columns
  masked out (labels < 0 give loss 0);
- `attention_mask`: None, or a [b, sk] key-padding mask (1/True = real token; sk counts cached positions too).
  Causal + sliding-window masking is always applied inside; a 4-D megatron mask is refused.
- context parallelism (CP group of size > 1): a forward without KV cache and padding mask takes THIS rank's zigzag
  share of each sequence (input_ids, labels, segment ids and position ids split by context_split.split_for_rank;
  position ids are the tokens' global positions, which RoPE uses) and returns this rank's share of the output. A
  forward with a KV cache or padding mask (generation) runs the whole sequence on every CP rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy

from ..parallel.context_attention import ContextParallelState
from ..parallel.context_split import positions_for_rank
from .attention import BATCH_FIRST, AttentionContext
from .kv_cache import KVCache
from .rope import Gemma3RotaryEmbedding


class Gemma3Model(GPTModel):
    """GPTModel + Gemma 3. `hf_vocab_size` is the real vocabulary; `vocab_size` (megatron's) the padded one."""

    def __init__(
        self,
        config,
        transformer_layer_spec,
        vocab_size: int,
        hf_vocab_size: int,
        max_sequence_length: int,
        rope_local_base: float,
        rope_global_base: float,
        rope_global_scaling_factor: float,
        pre_process: bool = True,
        post_process: bool = True,
        vp_stage: int | None = None,
        pg_collection=None,
    ) -> None:
        super().__init__(
            config=config,
            transformer_layer_spec=transformer_layer_spec,
            vocab_size=vocab_size,
            max_sequence_length=max_sequence_length,
            pre_process=pre_process,
            post_process=post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=True,
            position_embedding_type="none",  # our RoPE below; megatron's would use one base for all layers
            vp_stage=vp_stage,
            pg_collection=pg_collection,
        )
        self.hf_vocab_size = hf_vocab_size
        self.rotary_pos_emb = Gemma3RotaryEmbedding(
            config.kv_channels, rope_local_base, rope_global_base, rope_global_scaling_factor
        )
        # sqrt(hidden) is rounded to the parameter dtype before the multiply, as HF (>= PR #37109) and the official
        # JAX implementation do: bf16(sqrt(640)) = 25.25, not 25.298 (see docs/MODEL.md).
        self.embedding_scale = math.sqrt(config.hidden_size)
        #: hook: the training loss straight from the hidden states and the output weight, without the
        #: [tokens, vocab] logits - (hidden, weight, labels, *, vocab_size) -> per-token loss, same layout as labels;
        #: filled by the speed layer (gemma3_runtime.perf.apply), used on one tensor-parallel rank only
        self.fused_loss: Callable[..., torch.Tensor] | None = None
        cp_group = self.pg_collection.cp
        #: the context-parallel group, None without context parallelism (then nothing on the forward path changes)
        self.context_parallel_group = cp_group if cp_group is not None and cp_group.size() > 1 else None

    def _fused_loss_applies(self) -> bool:
        return self.fused_loss is not None and self.pg_collection.tp.size() == 1

    def setup_embeddings_and_output_layer(self) -> None:
        """megatron moves the last stage's tied copy with `.cuda()` before syncing it (PP > 1); not on CPU."""
        if not torch.cuda.is_available():
            from ..compat.megatron_cpu import tensor_cuda_is_identity

            with tensor_cuda_is_identity():
                return super().setup_embeddings_and_output_layer()
        return super().setup_embeddings_and_output_layer()

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _scaled_embedding(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, batch_first: bool = False
    ) -> torch.Tensor:
        if batch_first:  # megatron's LanguageModelEmbedding without its [b, s] -> [s, b] transpose copy
            emb = self.embedding.word_embeddings(input_ids)  # [b, s, D]
            if self.config.fp32_residual_connection:
                emb = emb.float()
            emb = self.embedding.embedding_dropout(emb)
        else:
            emb = self.embedding(input_ids=input_ids, position_ids=position_ids)  # [s, b, D]
        scale = torch.tensor(self.embedding_scale, dtype=self.embedding.word_embeddings.weight.dtype)
        return emb * scale.to(emb.dtype)

    def _batch_first(self, input_ids, decoder_input, labels, ctx_needed: bool) -> bool:
        """Whether this forward runs the decoder batch-major: the training loss on one GPU stage, no padding,
        packing or KV cache (`gemma3_batch_first`, perf.batch_first).

        WHY: megatron keeps activations [s, b, D]; the flash kernels want [b, s, heads, d]. Their outputs and the
        gradients coming back are then strided views, which aten's flash backward copies to contiguous ones
        (2 x 67 MB per sliding layer and micro-batch of 8 x 4096 tokens; docs/PERFORMANCE.md), and the embedding is
        transposed once more. megatron's layers never look at which leading dim is which (no
        sequence parallelism, no pipeline p2p shapes, no chunked prefill here), our RoPE and core attention are told
        by the batch-first context, and the fused loss takes [b, s] directly.
        """
        cfg = self.config
        return bool(
            cfg.gemma3_batch_first
            and labels is not None
            and not ctx_needed
            and self._fused_loss_applies()
            and self.pre_process
            and self.post_process
            and decoder_input is None
            and input_ids is not None
            and not cfg.sequence_parallel
            and not cfg.attention_dropout
            and not cfg.hidden_dropout
            and cfg.mlp_chunks_for_prefill == 1
        )

    def _vocab_range(self) -> tuple[int, int]:
        per_rank = self.output_layer.output_size_per_partition
        start = per_rank * self.pg_collection.tp.rank()
        return start, start + per_rank

    def _mask_padded_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        start, end = self._vocab_range()
        if end <= self.hf_vocab_size:
            return logits
        cols = torch.arange(start, end, device=logits.device) >= self.hf_vocab_size
        return logits.masked_fill(cols, float("-inf"))

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        segment_ids: torch.Tensor | None = None,
        **unsupported,
    ) -> torch.Tensor:
        bad = {k for k, v in unsupported.items() if v is not None}
        if bad:
            raise TypeError(f"Gemma3Model.forward: unsupported arguments {sorted(bad)}")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(
                f"attention_mask must be None or a [batch, keys] padding mask (1 = token), got shape "
                f"{tuple(attention_mask.shape)}; causal and sliding-window masks are built inside the model"
            )
        cp_state = None
        if self.context_parallel_group is not None and attention_mask is None and kv_cache is None:
            cp_state = self._context_parallel_state(input_ids, decoder_input, segment_ids)
        if position_ids is None:
            position_ids = self._default_positions(input_ids, decoder_input, kv_cache, cp_state)

        ctx_needed = (
            attention_mask is not None or kv_cache is not None or (segment_ids is not None and cp_state is None)
        )
        batch_first = self._batch_first(input_ids, decoder_input, labels, ctx_needed)
        if decoder_input is None and self.pre_process:
            decoder_input = self._scaled_embedding(input_ids, position_ids, batch_first)
        angles = self.rotary_pos_emb(position_ids)  # [2, s, b, 1, d]
        ctx = None
        if batch_first:
            angles, ctx = angles.transpose(1, 2), BATCH_FIRST
        if cp_state is not None:  # in either layout; the state carries the segment ids
            ctx = AttentionContext(batch_first=batch_first, context_parallel=cp_state)
        elif ctx_needed:  # (never batch-first)
            ctx = AttentionContext(key_padding_mask=attention_mask, segment_ids=segment_ids, kv_cache=kv_cache)

        hidden = self.decoder(
            hidden_states=decoder_input, attention_mask=None, rotary_pos_emb=angles, packed_seq_params=ctx
        )
        if not self.post_process:
            return hidden

        output_weight = self.shared_embedding_or_output_weight()
        if labels is not None and self._fused_loss_applies():
            # same per-token loss as below without materialising [s, b, V] logits (labels < 0 give loss 0)
            if batch_first:  # hidden [b, s, D]
                return self.fused_loss(hidden, output_weight, labels, vocab_size=self.hf_vocab_size)
            return self.fused_loss(hidden, output_weight, labels.t(), vocab_size=self.hf_vocab_size).t().contiguous()
        logits, _ = self.output_layer(hidden, weight=output_weight, runtime_gather_output=False)  # [s, b, V/tp]
        if labels is not None:
            logits = self._mask_padded_vocab(logits.float())
            target = labels.t().contiguous()
            loss = vocab_parallel_cross_entropy(logits, target.clamp(min=0))  # [s, b] fp32
            return loss.masked_fill(target < 0, 0.0).t().contiguous()
        if self.pg_collection.tp.size() > 1:
            logits = gather_from_tensor_model_parallel_region(logits, group=self.pg_collection.tp)
        return logits[..., : self.hf_vocab_size].transpose(0, 1).contiguous()

    def _context_parallel_state(self, input_ids, decoder_input, segment_ids) -> ContextParallelState:
        """The per-forward CP state every layer shares: the full sequence length is the local one times CP."""
        local = input_ids.shape[1] if input_ids is not None else decoder_input.shape[0]
        if self.config.sequence_parallel and input_ids is None:
            local *= self.pg_collection.tp.size()
        seq_len = local * self.context_parallel_group.size()
        return ContextParallelState(seq_len=seq_len, group=self.context_parallel_group, segment_ids=segment_ids)

    def _default_positions(self, input_ids, decoder_input, kv_cache, cp_state=None) -> torch.Tensor:
        if input_ids is not None:
            b, s = input_ids.shape
            device = input_ids.device
        else:
            hidden = decoder_input if decoder_input is not None else self.decoder.input_tensor
            s, b = hidden.shape[0], hidden.shape[1]
            if self.config.sequence_parallel:
                s *= self.pg_collection.tp.size()
            device = hidden.device
        if cp_state is not None:  # this rank's global positions
            return positions_for_rank(cp_state.seq_len, cp_state.cp_size, cp_state.rank, device).expand(b, s)
        start = kv_cache.length if kv_cache is not None else 0
        return torch.arange(start, start + s, device=device).unsqueeze(0).expand(b, s)
