"""Task datasets of the paper and its rebuttal (method.md sections 1 and 7).

Modules: `words` (template text, names, countries), one module per task family (`arithmetic`,
`sequence`, `lcm`, `function`, `compositional`, `rebuttal`), `registry` (name -> task), `filters`
(tokenizer-aware), `generate` (the engine), `splits`, `perturb`, `build` (a whole dataset folder).
Submodules are imported on use so that importing `analysis.tasks` stays cheap.
"""
