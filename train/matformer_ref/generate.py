"""Tiny generation helper for samples (recomputes the full prefix each step)."""
import torch


@torch.no_grad()
def generate(model, sp, prompt, widths, skipped, max_new_tokens=40, temperature=0.0, top_k=40, seed=0):
    ids = [sp.bos_id()] + sp.encode(prompt)
    prompt_ids = ids[1:]
    g = torch.Generator().manual_seed(seed)
    new = []
    for _ in range(max_new_tokens):
        x = torch.tensor([ids + new])
        logits = model(x, widths, skipped)[0, -1]
        if temperature <= 0:
            t = int(torch.argmax(logits))
        else:
            logits = logits / temperature
            if top_k:
                v, _ = torch.topk(logits, top_k)
                logits[logits < v[-1]] = float("-inf")
            t = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g))
        if t == sp.eos_id():
            break
        new.append(t)
    # decode with the prompt so the continuation keeps its leading space
    full = sp.decode(prompt_ids + new)
    head = sp.decode(prompt_ids)
    return full[len(head):] if full.startswith(head) else sp.decode(new)
