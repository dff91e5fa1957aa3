"""The jobs: what a command does, apart from its options (ingest/commands/ parses those).

    finetune      fine-tune and stream every checkpoint's circuit into Neo4j (CircuitCheckpointCallback)
    summary       a run's summary from the store; ingest-and-summarise for the commands and demos
    task_data     a task's dataset made with a model's tokenizer (--task) or a given folder (--data)
    circuitlora   CircuitLoRA plans (critical layers or random) and phase-1/phase-2 training
    experiment    the paper's method comparison and its table, from the store
    findings      the paper's four Key Observations run and judged (findings_setup: presets, model and
                  data; findings_ko12 / findings_ko34: the observations; findings_page: the page)
    robustness    circuits on perturbed data, disjoint splits and the resampling-noise baseline
    report        a run's figures and HTML page from the store (and its Browser view)
    report_multi  several runs and experiments on one page: Figures 2 and 4, Tables 1/3/4, the union curve
                  (report_tables, report_union, report_page; paper_numbers: the paper's published figures)
    demo          the small local model of `circuitshift demo`; real_demo: the real-model path
    local_server  the local Neo4j server: start (password, schema, Browser assets), stop
    export        one stored circuit as GraphML, GEXF, EAP-IG JSON or hannamw's .pt (MIB's format)
    import_eap    EAP-IG JSON and .pt circuits into the store
    score         score a model's graph on a dataset into a JSON file
"""
