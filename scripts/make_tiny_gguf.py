#!/usr/bin/env python3
"""Write a tiny random-weight llama GGUF model for tests (no downloads needed).

Usage (needs the `gguf` package and numpy, e.g. the .venv-llamacpp venv):
    make_tiny_gguf.py OUTPUT.gguf [--seed N] [--eos-bias X]

The same seed always gives a byte-identical file (~0.7 MB) that llama.cpp and
llama-cpp-python (`python -m llama_cpp.server --model OUTPUT.gguf`) load.

Model: architecture "llama", all tensors F32, 64-dim embeddings, 2 layers,
4 heads of 16 dims (4 KV heads), SwiGLU FFN of 128, context 2048, rope over
the full head (16 dims), RMS norm eps 1e-5. Tensors, as numpy shapes (GGUF
stores dimensions reversed, so llama.cpp sees e.g. token_embd as {64, n_vocab}):
    token_embd.weight, output.weight      (n_vocab, 64)
    output_norm.weight, blk.N.attn_norm.weight, blk.N.ffn_norm.weight  (64,)
    blk.N.attn_q/attn_k/attn_v/attn_output.weight                      (64, 64)
    blk.N.ffn_gate.weight, blk.N.ffn_up.weight (128, 64); blk.N.ffn_down.weight (64, 128)

Vocab (SentencePiece style, tokenizer.ggml.model = "llama"), in id order:
    0 <unk>, 1 <s> (bos), 2 </s> (eos), 3 <|im_start|>, 4 <|im_end|>  (control)
    5..260 byte-fallback tokens <0x00>..<0xFF>  (type BYTE: any input tokenizes)
    then single characters, then "▁"-prefixed words together with every prefix
    of them ("▁r", "▁ro", ... "▁router"), so the SPM merges turn prompt text
    into whole-word tokens; scores favour earlier (more common) pieces.

Readable output: hidden dimension 0 is a constant "steering" channel (1.0 in
every token embedding; never written by attention/FFN), so after the final RMS
norm it is ~constant and output.weight[:, 0] acts as a per-token logit bias:
whole words (and "," ".") sit ~30 logits above everything else, so the random
weights only choose *which* word comes next, and the text is always valid UTF-8
made of words, never bytes, letters or control tokens. --eos-bias X adds X
logits to </s> (which otherwise sits with the other non-words). Measured with
llama-cpp-python's default sampling (temperature 0.8, min_p 0.05): 0 (default)
never stops by itself, so generation runs to max_tokens; 30 stops now and then
(a third of 32-token runs); 33 after ~2 tokens; >= 36 at once (empty text,
finish_reason "stop"). Low temperatures (chat default 0.2) make this sharper.
Low temperatures also make the text loop ("makes remote makes remote").
"""
from __future__ import annotations

import argparse

import numpy as np
import gguf

N_EMBD, N_LAYER, N_HEAD, N_FF, N_CTX = 64, 2, 4, 128, 2048
WORD_LOGIT, OTHER_LOGIT = 0.0, -30.0

CHATML = ("{% for message in messages %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

WORDS = """the a an and or of to in on for with by from at as is are was be it this that we you they
can will not all one two new more some each every fast slow small large local remote good best first
next last open simple router model models server proxy request requests response token tokens stream
backend cluster node queue cache route routes load balance health check retry timeout latency error
config prompt chat message reply answer question text word words data time day way world system
service client user path port host network memory engine test result value output input stop start
run runs send sends read write works makes takes gives finds picks sees knows uses keeps quick quiet
bright green blue river mountain light hello""".split()
CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?:;'\"-()/")
PUNCT_WORDS = {",": 2.0, ".": 2.0}  # logits of the punctuation "words", relative to a word


def build_vocab() -> tuple[list[str], list[float], list[int], list[float]]:
    """Return (tokens, scores, token types, logit bias per token)."""
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL, T.CONTROL, T.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256
    pieces = ["▁"] + CHARS
    for w in WORDS:
        pieces += ["▁" + w[:k] for k in range(1, len(w) + 1)]
    pieces = list(dict.fromkeys(pieces))  # dedupe, keep order
    n_special = len(tokens)
    tokens += pieces
    types += [T.NORMAL] * len(pieces)
    scores = [0.0] * n_special + [-float(i) for i in range(len(pieces))]
    words = {"▁" + w for w in WORDS}
    bias = [WORD_LOGIT + PUNCT_WORDS[t] if t in PUNCT_WORDS else WORD_LOGIT if t in words else OTHER_LOGIT
            for t in tokens]
    return tokens, scores, [int(t) for t in types], bias


def build_tensors(rng: np.random.Generator, bias: list[float], eos_id: int, eos_bias: float) -> dict[str, np.ndarray]:
    def normal(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    n_vocab = len(bias)
    t: dict[str, np.ndarray] = {}
    emb = normal(n_vocab, N_EMBD, scale=0.05)
    emb[:, 0] = 1.0  # the steering channel
    t["token_embd.weight"] = emb
    for i in range(N_LAYER):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = np.ones(N_EMBD, np.float32)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            t[p + name + ".weight"] = normal(N_EMBD, N_EMBD)  # (out, in)
        t[p + "attn_output.weight"][0, :] = 0.0  # keep channel 0 constant
        t[p + "ffn_norm.weight"] = np.ones(N_EMBD, np.float32)
        t[p + "ffn_gate.weight"] = normal(N_FF, N_EMBD)
        t[p + "ffn_up.weight"] = normal(N_FF, N_EMBD)
        t[p + "ffn_down.weight"] = normal(N_EMBD, N_FF)
        t[p + "ffn_down.weight"][0, :] = 0.0
    t["output_norm.weight"] = np.ones(N_EMBD, np.float32)
    # Logit of token v ~= h0 * out[v, 0] + noise, with h0 = the normed steering channel.
    rms = np.sqrt(np.mean(emb.astype(np.float64) ** 2, axis=1)).mean()
    h0 = 1.0 / rms
    out = normal(n_vocab, N_EMBD, scale=0.3)  # context-dependent variety among the words
    logit_bias = np.array(bias, np.float64)
    logit_bias[eos_id] += eos_bias
    out[:, 0] = (logit_bias / h0).astype(np.float32)
    t["output.weight"] = out
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", help="path of the .gguf file to write")
    ap.add_argument("--seed", type=int, default=0, help="numpy seed for the weights (default 0)")
    ap.add_argument("--eos-bias", type=float, default=0.0,
                    help="logits added to </s>: 0 = never stops by itself, >= 36 = stops at once")
    args = ap.parse_args()

    tokens, scores, types, bias = build_vocab()
    eos_id = tokens.index("</s>")
    tensors = build_tensors(np.random.default_rng(args.seed), bias, eos_id, args.eos_bias)

    w = gguf.GGUFWriter(args.output, "llama")
    w.add_name("tiny-llm-router-test")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(tokens.index("<unk>"))
    w.add_bos_token_id(tokens.index("<s>"))
    w.add_eos_token_id(eos_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
