"""An independent node-by-node reference forward of the tiny GPT-NeoX / GPT-2 / GPT-Neo / OPT / Llama models,
shared by
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
    """Node-by-node float64 forward of a tiny HF GPT-NeoX / GPT-2 / GPT-Neo / OPT / Llama."""

    def __init__(self, model):
        self.m = model
        c = self.c = model.config
        self.arch = c.model_type
        self.D = c.hidden_size
        if self.arch == "gpt_neox":
            self.L, self.H, self.G = c.num_hidden_layers, c.num_attention_heads, c.num_attention_heads
            self.blocks = model.gpt_neox.layers
        elif self.arch == "gpt2":
            self.L, self.H, self.G = c.n_layer, c.n_head, c.n_head
            self.blocks = model.transformer.h
        elif self.arch == "gpt_neo":
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
        # parallel attention/MLP (GPT-NeoX): the MLP reads what the layer's heads read
        self.parallel = self.arch == "gpt_neox" and bool(getattr(c, "use_parallel_residual", False))
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
        return n + self.H if key[0] == "m" and not self.parallel else n

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
        if self.arch in ("gpt_neox", "gpt2"):
            return b.attention if self.arch == "gpt_neox" else b.attn
        return b.attn.attention if self.arch == "gpt_neo" else b.self_attn

    def norms(self, l):
        b = self.blocks[l]
        if self.arch in ("gpt2", "gpt_neo"):
            return b.ln_1, b.ln_2
        if self.arch == "gpt_neox":
            return b.input_layernorm, b.post_attention_layernorm
        if self.arch == "opt":
            return b.self_attn_layer_norm, b.final_layer_norm
        return b.input_layernorm, b.post_attention_layernorm

    def qkv_weights(self, l):
        """{q|k|v: (weight rows (heads * dh, D), head-major; bias or None)}."""
        att, H, dh, D = self.attn_mod(l), self.H, self.dh, self.D
        if self.arch == "gpt_neox":  # fused, per head [q, k, v]
            w, b = att.query_key_value.weight.view(H, 3, dh, D), att.query_key_value.bias.view(H, 3, dh)
            return {t: (w[:, i].reshape(H * dh, D), b[:, i].reshape(-1)) for i, t in enumerate("qkv")}
        if self.arch == "gpt2":  # a fused Conv1D (in, out): [q | k | v]
            w, b = att.c_attn.weight.t().reshape(3, H * dh, D), att.c_attn.bias.view(3, H * dh)
            return {t: (w[i], b[i]) for i, t in enumerate("qkv")}
        return {t: (getattr(att, f"{t}_proj").weight, getattr(att, f"{t}_proj").bias) for t in "qkv"}

    def o_weights(self, l):
        att = self.attn_mod(l)
        if self.arch == "gpt2":  # Conv1D: the weight is already (in, out)
            o, W = att.c_proj, att.c_proj.weight.reshape(self.H, self.dh, self.D)
        else:
            o = att.dense if self.arch == "gpt_neox" else att.o_proj if self.arch == "llama" else att.out_proj
            W = o.weight.t().reshape(self.H, self.dh, self.D)
        return W, (o.bias if o.bias is not None else torch.zeros(self.D, dtype=W.dtype))

    def mlp(self, l, x):
        b = self.blocks[l]
        if self.arch == "opt":
            return b.fc2(torch.relu(b.fc1(x)))
        return b.mlp(x)

    def embed(self, ids):
        if self.arch == "gpt_neox":
            return self.m.gpt_neox.embed_in(ids)
        if self.arch in ("gpt2", "gpt_neo"):
            return self.m.transformer.wte(ids)
        if self.arch == "opt":
            return self.m.model.decoder.embed_tokens(ids)
        return self.m.model.embed_tokens(ids)

    def positions(self, P):
        if self.arch in ("gpt2", "gpt_neo"):
            return self.m.transformer.wpe.weight[:P]
        if self.arch == "opt":
            return self.m.model.decoder.embed_positions.weight[2:P + 2]  # OPT's offset of 2
        return torch.zeros(P, self.D, dtype=torch.float64)

    def rope(self, P):
        if self.arch == "gpt_neox":  # partial rotary: the model's own cos / sin (first rd dims)
            x = torch.zeros(1, P, self.D, dtype=torch.float64)
            cos, sin = self.m.gpt_neox.rotary_emb(x, torch.arange(P)[None])
            return cos[0], sin[0]
        rp = getattr(self.c, "rope_parameters", None) or {}
        theta = rp.get("rope_theta", getattr(self.c, "rope_theta", 10000.0))
        inv = 1.0 / (theta ** (torch.arange(0, self.dh, 2, dtype=torch.float64) / self.dh))
        f = torch.arange(P, dtype=torch.float64)[:, None] * inv[None]
        emb = torch.cat([f, f], -1)
        return emb.cos(), emb.sin()

    def final(self, x):
        if self.arch == "gpt_neox":
            mod = self.m.gpt_neox.final_layer_norm
        elif self.arch in ("gpt2", "gpt_neo"):
            mod = self.m.transformer.ln_f
        elif self.arch == "opt":
            mod = self.m.model.decoder.final_layer_norm
        else:
            mod = self.m.model.norm
        return self.m.get_output_embeddings()(self.norm(mod, x))

    # forward ----------------------------------------------------------------
    def forward(self, ids, emb, eps=None, diff=None, keep=None, corr=None, all_positions=False, override=None):
        """Last-position logits (V,) (every position's (P, V) with ``all_positions``) and node outputs
        [input, a0.h0.., m0, ...] of one prompt.

        eps/diff: per-edge perturbations (scores); keep/corr: an edge (s, key) not kept carries the
        corrupted output of its source (patching); override: {source index: replacement output}
        (activation interpolation)."""
        P = ids.shape[0]
        H, G, dh = self.H, self.G, self.dh
        override = override or {}
        outs = [override.get(0, emb)]
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
            ln1, ln2 = self.norms(l)
            Wo, bo = self.o_weights(l)
            qkv = self.qkv_weights(l)
            n_rows = {"q": H, "k": G, "v": G}

            def proj(t, h):
                w, b = qkv[t]
                x = self.norm(ln1, inp((t, l, h), const))
                y = x @ w[h * dh:(h + 1) * dh].T
                return y if b is None else y + b[h * dh:(h + 1) * dh]

            q = [proj("q", h) for h in range(n_rows["q"])]
            k = [proj("k", g) for g in range(G)]
            v = [proj("v", g) for g in range(G)]
            mask = allowed
            scale = 1.0 / math.sqrt(dh)
            if self.arch == "gpt_neo":
                scale = 1.0  # GPT-Neo does not scale its attention scores
                if self.c.attention_layers[l] == "local":
                    mask = allowed & (i[:, None] - i[None, :] < self.c.window_size)
            if self.arch in ("llama", "gpt_neox"):
                cos, sin = self.rope(P)
                rd = cos.shape[-1]

                def rot(x):
                    xr = x[..., :rd]
                    return torch.cat([xr * cos + _rotate_half(xr) * sin, x[..., rd:]], dim=-1)
                q, k = [rot(x) for x in q], [rot(x) for x in k]
            heads = []
            for h in range(H):
                g = h // self.r  # grouped-query: the kv-head this query head reads
                a = ((q[h] @ k[g].T) * scale).masked_fill(~mask, float("-inf")).softmax(-1)
                heads.append(a @ v[g] @ Wo[h])
            for x in heads:
                outs.append(override.get(len(outs), x))
            mlp_const = const if self.parallel else const + bo  # the heads' bias is upstream of a sequential MLP
            const = const + bo
            outs.append(override.get(len(outs), self.mlp(l, self.norm(ln2, inp(("m", l), mlp_const)))))
        x = inp(("logits",), const)
        logits = self.final(x)
        return (logits if all_positions else logits[-1]), outs


def _ids(tok, text):
    return torch.tensor([0] + tok(text, add_special_tokens=False)["input_ids"])


