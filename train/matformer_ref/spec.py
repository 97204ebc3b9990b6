"""Submodel spec names (docs/model-format.md, "Submodels")."""


def _names(config):
    grans = list(config["granularities"])
    names = list(config.get("granularity_names") or [])
    return grans, names


def _token_to_width(tok, grans, names):
    if tok in names:
        return grans[names.index(tok)]
    if tok.isdigit() and int(tok) in grans:
        return int(tok)
    raise ValueError(f"unknown granularity {tok!r} (have {names or grans})")


def parse_spec(name, config):
    """Canonical spec name -> (widths: list[int] per layer, skipped: set[int]).

    "XL" -> every layer at XL; "S-S-M-M-L-L" -> one token per layer;
    "S-skip-M-M-L-L" -> layer 1 skipped (its width entry is still filled with
    the largest granularity, but unused). Widths may also be given as numbers.
    """
    grans, names = _names(config)
    L = config["num_hidden_layers"]
    name = name.strip()
    toks = name.split("-")
    if len(toks) == 1 and L != 1:
        toks = toks * L
    if len(toks) != L:
        raise ValueError(f"spec {name!r} has {len(toks)} tokens, model has {L} layers")
    widths, skipped = [], set()
    for i, tok in enumerate(toks):
        if tok == "skip":
            skipped.add(i)
            widths.append(grans[-1])
        else:
            widths.append(_token_to_width(tok, grans, names))
    return widths, skipped


def canonical_name(widths, skipped, config):
    """(widths, skipped) -> canonical spec name."""
    grans, names = _names(config)
    toks = []
    for i, w in enumerate(widths):
        if i in skipped:
            toks.append("skip")
        elif names and w in grans:
            toks.append(names[grans.index(w)])
        else:
            toks.append(str(w))
    if not skipped and len(set(toks)) == 1:
        return toks[0]
    return "-".join(toks)


def active_params(widths, skipped, config):
    """Active parameter count as defined in docs/model-format.md."""
    d = config["hidden_size"]
    H, KV, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    dp = config["hidden_size_per_layer_input"]
    L, V = config["num_hidden_layers"], config["vocab_size"]
    attn = d * H * hd * 2 + d * KV * hd * 2
    total = 0
    for i in range(L):
        if i in skipped:
            continue
        total += attn + 3 * d * widths[i] + 2 * d * dp + 3 * d  # 3 norms of [d]
    total += L * dp * d + dp + d + V * d
    return total
