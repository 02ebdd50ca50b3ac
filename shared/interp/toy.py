"""Known-answer models for checking the analyses: a GPT-2 with a hand-planted induction circuit.

``plant_induction()`` builds a 2-layer GPT-2 whose layer-0 head 0 is an exact previous-token head and
whose layer-1 head 0 is an induction head; ``char_tokenizer(dir)`` saves the 32-id character tokenizer
that goes with it. The induction detector must find exactly these heads, and a randomly initialised
``random_model()`` must score at chance (``tests/shared/interp``). Not used by the stage itself.
"""
from __future__ import annotations

import torch

from shared.model.gpt import GPT, GPTConfig

V, P = 32, 48  # vocabulary, context
# Residual stream = [token one-hot | position one-hot | previous-token one-hot]; two heads of 56 dims each.
TOY = GPTConfig(vocab_size=V, block_size=P, n_layer=2, n_head=2, n_embd=2 * V + P + 16)
TOK, POS, PREV = 0, V, V + P


def random_model(seed: int = 1) -> GPT:
    """``GPT(TOY)`` as initialised for training: what a detector must score at chance."""
    torch.manual_seed(seed)
    return GPT(TOY).eval()


def plant_induction(gain: float = 2.0) -> GPT:
    """A 2-layer GPT-2 that implements induction by hand (MLPs and the second heads switched off).

    Layer 0 head 0 is a previous-token head: the query at position p matches the key at p - 1 and
    copies that token into the previous-token slot. Layer 1 head 0 is the induction head: the current
    token's query matches keys whose previous-token slot holds the same token, and copies the token
    found there into the token slot the (tied) unembedding reads, so the next token is predicted.
    LayerNorm divides by the residual's (nearly constant) std, which the gains absorb.
    """
    model = GPT(TOY)
    C, hd = TOY.n_embd, TOY.n_embd // TOY.n_head
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in [model.transformer.ln_f] + [m for b in model.transformer.h for m in (b.ln_1, b.ln_2)]:
            ln.weight.fill_(1.0)
        model.transformer.wte.weight[:, TOK:TOK + V] = torch.eye(V)
        model.transformer.wpe.weight[:, POS:POS + P] = torch.eye(P)
        attn0, attn1 = model.transformer.h[0].attn, model.transformer.h[1].attn
        for i in range(P - 1):  # the query at position i + 1 meets the key at position i in dim i + 1
            attn0.c_attn.weight[i + 1, POS + i + 1] = gain  # q
            attn0.c_attn.weight[C + i + 1, POS + i] = gain  # k
        for t in range(V):
            attn0.c_attn.weight[2 * C + t, TOK + t] = 1.0  # v: the token
            attn0.c_proj.weight[PREV + t, t] = 0.15  # o: into the previous-token slot
            attn1.c_attn.weight[t, TOK + t] = gain  # q: current token
            attn1.c_attn.weight[C + t, PREV + t] = gain  # k: previous token of the key position
            attn1.c_attn.weight[2 * C + t, TOK + t] = 1.0  # v: the key position's token
            attn1.c_proj.weight[TOK + t, t] = 1.5  # o: predict it
    assert hd >= P
    return model.eval()


CHARS = "abcdefghijklmnopqrstuvwxyz .()?"  # "?" stands for any other character


def char_tokenizer(out_dir):
    """Save a character-level fast tokenizer (ids 0..30 the characters, 31 ``<|endoftext|>``) into ``out_dir``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {c: i for i, c in enumerate(CHARS)} | {"<|endoftext|>": V - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="?")
    fast.save_pretrained(out_dir)
    return out_dir
