# Figures and pages for `snakemake --report report.html`.


# A plot and a page: not worth a cluster job.
localrules:
    report_run,
    report_sweep,


rule report_run:
    input:
        metrics=rules.train_run.output.metrics,
        model=rules.train_run.output.provenance,
        samples=rules.sample_run.output.provenance,
        evals=rules.eval_run.output.metrics,
        samples_txt=rules.sample_run.output.samples,
        config=rules.train_run.output.config,
        data=lambda w: prepared_dir(w.run),
        raw=lambda w: raw_provenance(w.run),
    output:
        curves=report(
            f"{RESULTS}/{{run}}/report/loss.svg",
            caption="../report/loss.rst",
            category="{run}",
            labels={"run": "{run}", "figure": "loss curves"},
        ),
        chain=report(
            f"{RESULTS}/{{run}}/report/provenance.html",
            caption="../report/provenance.rst",
            category="{run}",
            labels={"run": "{run}", "figure": "provenance chain"},
        ),
        evals=report(
            f"{RESULTS}/{{run}}/report/eval.html",
            caption="../report/eval.rst",
            category="{run}",
            labels={"run": "{run}", "figure": "evaluation"},
        ),
        # Text shown in the page itself (a .txt or .toml would be a download link).
        samples=report(
            f"{RESULTS}/{{run}}/report/samples.html",
            caption="../report/samples.rst",
            category="{run}",
            labels={"run": "{run}", "figure": "samples"},
        ),
        config=report(
            f"{RESULTS}/{{run}}/report/config.html",
            caption="../report/config.rst",
            category="{run}",
            labels={"run": "{run}", "figure": "resolved config"},
        ),
    log:
        f"{LOGS}/report/{{run}}.log",
    conda:
        "../envs/nanogptx.yaml"
    params:
        **stage_params("report", run_file=False),
        raw=lambda w, input: Path(input.raw).parent,
        model=lambda w, input: Path(input.model).parent,
        samples=lambda w, input: Path(input.samples).parent,
        pair=lambda w, input: f"{w.run}={input.metrics}",
        samples_title=lambda w: f"samples of {w.run}",
        config_title=lambda w: f"resolved config of {w.run}",
    shell:
        "(python -m nanogptx.report curves --out {output.curves:q} --title {wildcards.run:q}"
        " {params.pair:q}"
        " && python -m nanogptx.report chain --out {output.chain:q} --run {wildcards.run:q}"
        " --raw {params.raw:q} --data {input.data:q} --model {params.model:q}"
        " --samples {params.samples:q}"
        " && python -m nanogptx.report evals --out {output.evals:q} --title {wildcards.run:q}"
        " {wildcards.run:q}={input.evals:q}"
        " && python -m nanogptx.report text --out {output.samples:q}"
        " --title {params.samples_title:q} {input.samples_txt:q}"
        " && python -m nanogptx.report text --out {output.config:q}"
        " --title {params.config_title:q} {input.config:q}) > {log:q} 2>&1"


rule report_sweep:
    input:
        metrics=expand(rules.train_run.output.metrics, run=RUNS),
        evals=expand(rules.eval_run.output.metrics, run=RUNS),
    output:
        curves=report(
            f"{RESULTS}/report/loss-{sweep_name(RUNS)}.svg",
            caption="../report/sweep.rst",
            category="all runs",
            labels={"figure": "loss curves of all runs"},
        ),
        evals=report(
            f"{RESULTS}/report/eval-{sweep_name(RUNS)}.html",
            caption="../report/eval.rst",
            category="all runs",
            labels={"figure": "evaluation of all runs"},
        ),
    log:
        f"{LOGS}/report/sweep.log",
    conda:
        "../envs/nanogptx.yaml"
    params:
        **stage_params("report", run_file=False),
        pairs=shlex.join(f"{run}={RESULTS}/{run}/model/metrics.jsonl" for run in RUNS),
        eval_pairs=shlex.join(
            f"{run}={RESULTS}/{run}/eval/metrics.json" for run in RUNS
        ),
    shell:
        "(python -m nanogptx.report curves --out {output.curves:q} --title 'all runs'"
        " {params.pairs}"
        " && python -m nanogptx.report evals --out {output.evals:q} --title 'all runs'"
        " {params.eval_pairs}) > {log:q} 2>&1"


# A sweep over train.learning_rate: final loss against learning rate and each variant's LR
# sensitivity (Wortsman et al. 2023), with the table of every point.
rule report_lr_sensitivity:
    input:
        evals=expand(rules.eval_run.output.metrics, run=RUNS),
        metrics=expand(rules.train_run.output.metrics, run=RUNS),
    output:
        curve=report(
            f"{RESULTS}/report/lr-sensitivity-{sweep_name(RUNS)}.svg",
            caption="../report/lr_sensitivity.rst",
            category="all runs",
            labels={"figure": "final loss against learning rate"},
        ),
        stats=report(
            f"{RESULTS}/report/lr-sensitivity-{sweep_name(RUNS)}-diagnostics.svg",
            caption="../report/sweep_diagnostics.rst",
            category="all runs",
            labels={"figure": "attention logits and log Z against step"},
        ),
        table=f"{RESULTS}/report/lr-sensitivity-{sweep_name(RUNS)}.json",
        csv=f"{RESULTS}/report/lr-sensitivity-{sweep_name(RUNS)}.csv",
    log:
        f"{LOGS}/report/lr-sensitivity.log",
    conda:
        "../envs/nanogptx.yaml"
    params:
        **stage_params("report", run_file=False),
        runs=shlex.join(f"{run}={RESULTS}/{run}" for run in RUNS),
        axes=",".join(SWEEP_AXES),
    shell:
        "python -m nanogptx.report sensitivity --out {output.curve:q} --table {output.table:q}"
        " --csv {output.csv:q} --stats {output.stats:q} --axes {params.axes:q} {params.runs} > {log:q} 2>&1"
