"""Tree steps for the decoding driver: propose a draft tree, verify every node in ONE target pass, keep a path.

Same cache convention as the chain loop (engine.decoding): the target's cache holds every
committed token but the last. Each step feeds the tree (root = that last token, then the drafted
nodes) with tree attention, gets every node's next-token distribution, walks down the tree
(engine.decoding.draft_tree), then compacts the cache to the committed prefix + root + accepted path, so
the next step's logits equal those of a fresh pass over the accepted text.
"""

from __future__ import annotations

import torch

from engine.decoding.driver import Decoder, Run, StepOutcome, alternating_phases, output_token, top_candidates
from engine.decoding.detokenize import IncrementalDetokenizer
from engine.decoding.draft_tree import DraftTree, TreeVerdict, verify_tree_greedy, verify_tree_sampling
from engine.events import DraftedToken, LengthDecision, StepFeedback, TreeNode
from engine.loading.causal_lm import FeatureTap
from engine.loading.models import LoadedModel
from engine.drafting.proposers.model_trees import TreeProposer
from engine.sampling import SamplingConfig, check_finite, logits_to_probs


class TreeDecoder(Decoder):
    """Target + tree proposer + sampling settings; yields the same StepEvents as the chain loop, with `tree` set."""

    def __init__(self, target: LoadedModel, proposer: TreeProposer, sampling: SamplingConfig = SamplingConfig(),
                 features: FeatureTap | None = None):
        super().__init__(target, sampling, features)
        self.tree_proposer = proposer

    def stepper(self, run: Run) -> TreeStepper:
        self.tree_proposer.start(list(run.tokens))
        return TreeStepper(self.tree_proposer)


class TreeStepper:
    def __init__(self, proposer: TreeProposer):
        self.proposer = proposer

    def step(self, run: Run) -> StepOutcome:
        sampling, detok = run.sampling, run.detok
        # 1. draft a tree no deeper than the budget allows (accepted path + 1 must fit)
        proposal = self.proposer.propose_tree(run.tokens, run.budget - 1, sampling, run.generator)
        tree = proposal.tree
        drafted_at = run.clock()
        decision = LengthDecision(len(tree) - 1, len(tree) - 1, proposal.info.get("summary", "draft tree"),
                                  {"nodes": len(tree) - 1, "depth": max(tree.depths())})

        # 2. verify: one target pass over every node with tree attention -> a distribution per node
        logits = run.target.forward_tree(tree.tokens, tree.parents)  # [N, vocab]
        check_finite(logits, "target")
        target_probs = logits_to_probs(logits, sampling)  # [N, vocab]
        verdict = (verify_tree_greedy(tree, logits) if sampling.greedy
                   else verify_tree_sampling(tree, target_probs, run.generator))
        verified_at = run.clock()

        path_tokens = tuple(tree.tokens[i] for i in verdict.accepted)
        last = verdict.accepted[-1] if verdict.accepted else 0
        nodes = tree_nodes(tree, target_probs, verdict, detok)
        return StepOutcome(
            decision=decision,
            draft=tuple(_as_drafted(node, target_probs[node.parent], detok) for node in nodes[1:]),
            accepted=path_tokens,
            verdict=verdict,
            output=output_token(verdict, target_probs[last], detok, sampling),
            drafted_at=drafted_at,
            verified_at=verified_at,
            phases=alternating_phases(run.step_started, drafted_at, verified_at) if len(tree) > 1 else (),
            proposer_info=proposal.info,
            tree=nodes,
            feedback=StepFeedback(len(tree) - 1, len(path_tokens), path_tokens),
        )

    def settle(self, run: Run, outcome: StepOutcome, context_length: int) -> None:
        # compact the cache: committed prefix, root, accepted path (the tree starts at position context_length - 1)
        root = context_length - 1
        run.target.keep_positions(list(range(root + 1)) + [root + i for i in outcome.verdict.accepted])
        self.proposer.observe(outcome.feedback)

    def close(self) -> None:
        pass


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
