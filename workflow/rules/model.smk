# Training, sampling, evaluation and export, one job each per run.


rule train_run:
    input:
        data=lambda w: prepared_dir(w.run),
        init=lambda w: init_weights(w.run),
    output:
        params=f"{RESULTS}/{{run}}/model/params.safetensors",
        config=f"{RESULTS}/{{run}}/model/config.toml",
        tokenizer=f"{RESULTS}/{{run}}/model/tokenizer.json",
        metrics=f"{RESULTS}/{{run}}/model/metrics.jsonl",
        provenance=f"{RESULTS}/{{run}}/model/provenance.json",
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{BENCH}/train/{{run}}.tsv"
    conda:
        "../envs/nanogptx.yaml"
    threads: 4
    resources:
        gpu=0,
    params:
        **stage_params("train"),
        out=lambda w: f"{RESULTS}/{w.run}/model",
        # Checkpoints are not outputs, so a failed or killed job leaves them for the rerun to
        # resume from; named by what a resume must share, so an extended run resumes there.
        checkpoints=checkpoint_dir,
        launch=srun_prefix,
        init=init_arg,
        # Progress lines go to fd 3, the job's stderr before the redirection to the log: the
        # terminal of snakemake (or the SLURM job's output); the full log stays in the file.
        progress=progress_args,
    shell:
        "{params.launch}python -m nanogptx.train --config {params.config:q} {params.overrides}"
        " --data {input.data:q} --out {params.out:q} --checkpoints {params.checkpoints:q}"
        " {params.init} {params.progress} 3>&2 > {log:q} 2>&1"


rule sample_run:
    input:
        params=rules.train_run.output.params,
        config=rules.train_run.output.config,
        tokenizer=rules.train_run.output.tokenizer,
        provenance=rules.train_run.output.provenance,
    output:
        samples=f"{RESULTS}/{{run}}/samples/samples.txt",
        provenance=f"{RESULTS}/{{run}}/samples/provenance.json",
    log:
        f"{LOGS}/sample/{{run}}.log",
    benchmark:
        f"{BENCH}/sample/{{run}}.tsv"
    conda:
        "../envs/nanogptx.yaml"
    threads: 2
    resources:
        gpu=0,
    params:
        **stage_params("sample"),
        model=lambda w, input: Path(input.params).parent,
        out=lambda w: f"{RESULTS}/{w.run}/samples",
        progress=stage_progress("sample"),
    shell:
        "python -m nanogptx.sample --config {params.config:q} {params.overrides} --model {params.model:q}"
        " --out {params.out:q} {params.progress} 3>&2 > {log:q} 2>&1"


rule eval_run:
    input:
        unpack(lambda w: eval_inputs(w.run)),
        params=rules.train_run.output.params,
        config=rules.train_run.output.config,
        tokenizer=rules.train_run.output.tokenizer,
        provenance=rules.train_run.output.provenance,
    output:
        metrics=f"{RESULTS}/{{run}}/eval/metrics.json",
        provenance=f"{RESULTS}/{{run}}/eval/provenance.json",
    log:
        f"{LOGS}/eval/{{run}}.log",
    benchmark:
        f"{BENCH}/eval/{{run}}.tsv"
    conda:
        "../envs/nanogptx.yaml"
    threads: 2
    resources:
        gpu=0,
    params:
        **stage_params("eval"),
        model=lambda w, input: Path(input.params).parent,
        out=lambda w: f"{RESULTS}/{w.run}/eval",
        inputs=eval_args,
        tasks=task_entries,
        progress=stage_progress("eval"),
    shell:
        "python -m nanogptx.eval --config {params.config:q} {params.overrides} --model {params.model:q}"
        " {params.inputs} --out {params.out:q} {params.progress} 3>&2 > {log:q} 2>&1"


# A GPT-2 the Hugging Face transformers library loads (GPT2LMHeadModel.from_pretrained).
rule export_run:
    input:
        params=rules.train_run.output.params,
        config=rules.train_run.output.config,
        provenance=rules.train_run.output.provenance,
    output:
        config=f"{RESULTS}/{{run}}/export/hf/config.json",
        weights=f"{RESULTS}/{{run}}/export/hf/model.safetensors",
        provenance=f"{RESULTS}/{{run}}/export/hf/provenance.json",
    log:
        f"{LOGS}/export/{{run}}.log",
    conda:
        "../envs/nanogptx.yaml"
    params:
        **stage_params("export", run_file=False),
        model=lambda w, input: Path(input.params).parent,
        out=lambda w, output: Path(output.config).parent,
    shell:
        "python -m nanogptx.export --model {params.model:q} --out {params.out:q} --format hf"
        " > {log:q} 2>&1"
