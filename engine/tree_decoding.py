"""The tree decoding loop: propose a draft tree, verify every node in ONE target pass, keep a path.

Same cache convention as the chain loop (engine.decoding): the target's cache holds every
committed token but the last. Each step feeds the tree (root = that last token, then the drafted
nodes) with tree attention, gets every node's next-token distribution, walks down the tree
(engine.draft_tree), then compacts the cache to the committed prefix + root + accepted path, so
the next step's logits equal those of a fresh pass over the accepted text.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from .causal_lm import CachedCausalLM
from .decoding import SpeculativeDecoder, commit, output_token, step_timings, top_candidates
from .detokenize import IncrementalDetokenizer
from .draft_tree import DraftTree, TreeVerdict, verify_tree_greedy, verify_tree_sampling
from .events import DraftedToken, LengthDecision, NewToken, StepEvent, TreeNode
from .models import LoadedModel
from .proposers.model_trees import TreeProposer
from .sampling import SamplingConfig, check_finite, logits_to_probs


class TreeDecoder(SpeculativeDecoder):
    """Target + tree proposer + sampling settings; yields the same StepEvents as the chain loop, with `tree` set."""

    def __init__(self, target: LoadedModel, proposer: TreeProposer, sampling: SamplingConfig = SamplingConfig()):
        super().__init__(target, None, None, sampling)
        self.tree_proposer = proposer

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Iterator[StepEvent]:
        self.check_prompt(prompt_ids)
        sampling, window, eos_ids = self.sampling, self.target.context_window, self.target.eos_token_ids
        generator = sampling.make_generator()
        detok = IncrementalDetokenizer(self.target.tokenizer, prompt_ids)
        target = CachedCausalLM(self.target.model)
        self.tree_proposer.start(list(prompt_ids))
        tokens = list(prompt_ids)
        run_start = time.perf_counter()
        paused = 0.0
        prefill_forwards = 0
        if len(tokens) > 1:
            target.forward(tokens[:-1])
            prefill_forwards = 1
        produced, step = 0, 0
        while True:
            step_start = time.perf_counter()
            # 1. draft a tree no deeper than the budget allows (accepted path + 1 must fit)
            budget = min(max_new_tokens - produced, window - len(tokens))
            proposal = self.tree_proposer.propose_tree(tokens, budget - 1, sampling, generator)
            tree = proposal.tree
            drafted_at = time.perf_counter()
            decision = LengthDecision(len(tree) - 1, len(tree) - 1, proposal.info.get("summary", "draft tree"),
                                      {"nodes": len(tree) - 1, "depth": max(tree.depths())})

            # 2. verify: one target pass over every node with tree attention -> a distribution per node
            logits = target.forward_tree(tree.tokens, tree.parents)  # [N, vocab]
            check_finite(logits, "target")
            target_probs = logits_to_probs(logits, sampling)  # [N, vocab]
            verdict = (verify_tree_greedy(tree, logits) if sampling.greedy
                       else verify_tree_sampling(tree, target_probs, generator))
            verified_at = time.perf_counter()

            # 3. commit the accepted path + the target's token, cut at EOS and the budget
            context_length = len(tokens)
            path_tokens = [tree.tokens[i] for i in verdict.accepted]
            committed, kinds, stop_reason = commit(tokens, path_tokens, verdict, len(tree) > 1, eos_ids,
                                                   max_new_tokens - produced, window)
            produced += len(committed)

            # 4. compact the cache: committed prefix, root, accepted path (the tree starts at position context_length - 1)
            if stop_reason is None:
                root = context_length - 1
                target.keep_positions(list(range(root + 1)) + [root + i for i in verdict.accepted])
                self.tree_proposer.observe(path_tokens)

            last = verdict.accepted[-1] if verdict.accepted else 0
            nodes = tree_nodes(tree, target_probs, verdict, detok)
            event = StepEvent(
                index=step,
                context_length=context_length,
                decision=decision,
                draft=tuple(_as_drafted(node, target_probs[node.parent], detok) for node in nodes[1:]),
                output=output_token(verdict, target_probs[last], len(tree) > 1, detok, sampling),
                new_tokens=tuple(NewToken(t, detok.push(t), kind) for t, kind in zip(committed, kinds)),
                target_forwards=1 + (prefill_forwards if step == 0 else 0),
                timings=step_timings(step_start, drafted_at, verified_at, run_start + paused, len(tree) > 1),
                stop_reason=stop_reason,
                proposer_info=proposal.info,
                tree=nodes,
            )
            yielded_at = time.perf_counter()
            yield event
            paused += time.perf_counter() - yielded_at
            if stop_reason is not None:
                return
            step += 1


def tree_nodes(tree: DraftTree, target_probs: torch.Tensor, verdict: TreeVerdict,
               detok: IncrementalDetokenizer) -> tuple[TreeNode, ...]:
    """The tree with verdicts, for the event. target_probs: [N, vocab]."""
    accepted = set(verdict.accepted)
    reached = {0} | accepted  # nodes whose distribution the verifier looked at
    depths, path_probs = tree.depths(), tree.path_probs()
    out = []
    for i, (token, parent) in enumerate(zip(tree.tokens, tree.parents)):
        verdict_name = ("root" if i == 0 else "accepted" if i in accepted
                        else "rejected" if i in verdict.tried else "unchecked")
        out.append(TreeNode(
            index=i, parent=parent, depth=depths[i], token_id=token, text=detok.piece(token),
            draft_prob=tree.draft_probs[i],
            path_prob=path_probs[i] if i else None,
            target_prob=float(target_probs[parent, token]) if i and parent in reached else None,
            accept_prob=verdict.tried.get(i),
            verdict=verdict_name,
            source=tree.sources[i],
        ))
    return tuple(out)


def _as_drafted(node: TreeNode, parent_row: torch.Tensor, detok: IncrementalDetokenizer) -> DraftedToken:
    """A tree node in the chain's terms (position = depth - 1), so metrics and the token strip keep working."""
    return DraftedToken(
        position=node.depth - 1, token_id=node.token_id, text=node.text, draft_prob=node.draft_prob,
        target_prob=node.target_prob, accept_prob=node.accept_prob, uniform=None,
        verdict=node.verdict,
        target_top=top_candidates(parent_row, detok) if node.target_prob is not None else (),
    )
