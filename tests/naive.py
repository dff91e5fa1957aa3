"""An independent node-by-node reference forward of the tiny GPT-Neo / OPT / Llama models, shared by
the tests that check the engine against it (it uses neither analysis.adapter, analysis.eap nor
analysis.metrics): every destination input (each head's q, k and v separately, each MLP, the logits)
is built explicitly as the sum of its upstream node outputs, so one scalar ``eps`` per edge (scores)
or one corrupted source output per edge (patching) can be put on it."""

from __future__ import annotations

import math

import torch


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Naive:
    """Node-by-node float64 forward of a tiny HF GPT-Neo / OPT / Llama."""

    def __init__(self, model):
        self.m = model
        c = self.c = model.config
        self.arch = c.model_type
        self.D = c.hidden_size
        if self.arch == "gpt_neo":
            self.L, self.H, self.G = c.num_layers, c.num_heads, c.num_heads
            self.blocks = model.transformer.h
        elif self.arch == "opt":
            self.L, self.H, self.G = c.num_hidden_layers, c.num_attention_heads, c.num_attention_heads
            self.blocks = model.model.decoder.layers
        else:
            self.L, self.H, self.G = c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads
            self.blocks = model.model.layers
        self.dh = self.D // self.H
        self.r = self.H // self.G
        self.sources = ["input"]
        self.dkeys = []
        for l in range(self.L):
            self.sources += [f"a{l}.h{h}" for h in range(self.H)] + [f"m{l}"]
            self.dkeys += [("q", l, h) for h in range(self.H)] + [("k", l, g) for g in range(self.G)]
            self.dkeys += [("v", l, g) for g in range(self.G)] + [("m", l)]
        self.dkeys.append(("logits",))
        self.col = {k: i for i, k in enumerate(self.dkeys)}

    # names ------------------------------------------------------------------
    def n_up(self, key):
        if key[0] == "logits":
            return len(self.sources)
        n = 1 + key[1] * (self.H + 1)
        return n + self.H if key[0] == "m" else n

    def edge_name(self, s, key):
        src = self.sources[s]
        if key[0] == "logits":
            return f"{src}->logits"
        if key[0] == "m":
            return f"{src}->m{key[1]}"
        head = key[2] if key[0] == "q" else key[2] * self.r  # kv-head g -> first query head of its group
        return f"{src}->a{key[1]}.h{head}<{key[0]}>"

    def edges(self):
        return [(s, k) for k in self.dkeys for s in range(self.n_up(k))]

    # pieces -----------------------------------------------------------------
    def norm(self, mod, x):
        w = mod.weight.double()
        if self.arch == "llama":
            return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + mod.variance_epsilon) * w
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + mod.eps) * w + mod.bias.double()

    def attn_mod(self, l):
        b = self.blocks[l]
        return b.attn.attention if self.arch == "gpt_neo" else b.self_attn

    def norms(self, l):
        b = self.blocks[l]
        if self.arch == "gpt_neo":
            return b.ln_1, b.ln_2
        if self.arch == "opt":
            return b.self_attn_layer_norm, b.final_layer_norm
        return b.input_layernorm, b.post_attention_layernorm

    def o_weights(self, l):
        o = self.attn_mod(l).out_proj if self.arch != "llama" else self.attn_mod(l).o_proj
        W = o.weight.t().reshape(self.H, self.dh, self.D)
        return W, (o.bias if o.bias is not None else torch.zeros(self.D, dtype=W.dtype))

    def mlp(self, l, x):
        b = self.blocks[l]
        if self.arch == "opt":
            return b.fc2(torch.relu(b.fc1(x)))
        return b.mlp(x)

    def embed(self, ids):
        if self.arch == "gpt_neo":
            return self.m.transformer.wte(ids)
        if self.arch == "opt":
            return self.m.model.decoder.embed_tokens(ids)
        return self.m.model.embed_tokens(ids)

    def positions(self, P):
        if self.arch == "gpt_neo":
            return self.m.transformer.wpe.weight[:P]
        if self.arch == "opt":
            return self.m.model.decoder.embed_positions.weight[2:P + 2]  # OPT's offset of 2
        return torch.zeros(P, self.D, dtype=torch.float64)

    def rope(self, P):
        rp = getattr(self.c, "rope_parameters", None) or {}
        theta = rp.get("rope_theta", getattr(self.c, "rope_theta", 10000.0))
        inv = 1.0 / (theta ** (torch.arange(0, self.dh, 2, dtype=torch.float64) / self.dh))
        f = torch.arange(P, dtype=torch.float64)[:, None] * inv[None]
        emb = torch.cat([f, f], -1)
        return emb.cos(), emb.sin()

    def final(self, x):
        if self.arch == "gpt_neo":
            mod = self.m.transformer.ln_f
        elif self.arch == "opt":
            mod = self.m.model.decoder.final_layer_norm
        else:
            mod = self.m.model.norm
        return self.m.get_output_embeddings()(self.norm(mod, x))

    # forward ----------------------------------------------------------------
    def forward(self, ids, emb, eps=None, diff=None, keep=None, corr=None, all_positions=False):
        """Last-position logits (V,) (every position's (P, V) with ``all_positions``) and node outputs
        [input, a0.h0.., m0, ...] of one prompt.

        eps/diff: per-edge perturbations (scores); keep/corr: an edge (s, key) not kept carries the
        corrupted output of its source (patching)."""
        P = ids.shape[0]
        H, G, dh = self.H, self.G, self.dh
        outs = [emb]
        const = self.positions(P).clone()

        def inp(key, base):
            x = base
            for s in range(self.n_up(key)):
                use_corr = keep is not None and not keep[(s, key)]
                x = x + (corr[s] if use_corr else outs[s])
                if eps is not None:
                    x = x + eps[s, self.col[key]] * diff[s]
            return x

        i = torch.arange(P)
        allowed = i[:, None] >= i[None, :]
        for l in range(self.L):
            att_mod = self.attn_mod(l)
            ln1, ln2 = self.norms(l)
            Wo, bo = self.o_weights(l)
            W = {t: getattr(att_mod, f"{t}_proj").weight for t in "qkv"}
            B = {t: getattr(att_mod, f"{t}_proj").bias for t in "qkv"}
            n_rows = {"q": H, "k": G, "v": G}

            def proj(t, h):
                x = self.norm(ln1, inp((t, l, h), const))
                y = x @ W[t][h * dh:(h + 1) * dh].T
                return y if B[t] is None else y + B[t][h * dh:(h + 1) * dh]

            q = [proj("q", h) for h in range(n_rows["q"])]
            k = [proj("k", g) for g in range(G)]
            v = [proj("v", g) for g in range(G)]
            mask = allowed
            scale = 1.0 / math.sqrt(dh)
            if self.arch == "gpt_neo":
                scale = 1.0  # GPT-Neo does not scale its attention scores
                if self.c.attention_layers[l] == "local":
                    mask = allowed & (i[:, None] - i[None, :] < self.c.window_size)
            if self.arch == "llama":
                cos, sin = self.rope(P)
                q = [x * cos + _rotate_half(x) * sin for x in q]
                k = [x * cos + _rotate_half(x) * sin for x in k]
            heads = []
            for h in range(H):
                g = h // self.r  # grouped-query: the kv-head this query head reads
                a = ((q[h] @ k[g].T) * scale).masked_fill(~mask, float("-inf")).softmax(-1)
                heads.append(a @ v[g] @ Wo[h])
            outs += heads
            const = const + bo
            outs.append(self.mlp(l, self.norm(ln2, inp(("m", l), const))))
        x = inp(("logits",), const)
        logits = self.final(x)
        return (logits if all_positions else logits[-1]), outs


def _ids(tok, text):
    return torch.tensor([0] + tok(text, add_special_tokens=False)["input_ids"])


