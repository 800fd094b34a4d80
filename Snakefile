# nanogptx: download -> prepare -> train -> sample, for every run in config/config.yaml.
#   snakemake --cores all                  the configured runs, end to end
#   snakemake --cores all prepare          up to a stage: download, prepare, train, sample or eval
#   snakemake --cores all export           the configured runs as Hugging Face GPT-2 directories
#   snakemake --cores all --config runs=tiny


from snakemake.utils import min_version

min_version("9.19")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/report.smk"


onstart:
    refuse_if_in_use()


# Each target asks for the outputs of every stage before its own too. Snakemake builds a missing
# file only when something asks for it: a job cut short (a kill, Ctrl-C, a crash) has had its
# outputs deleted, and the samples and evaluation of the model it was replacing then looked up
# to date, so that the same command planned nothing (docs/workflow.md: After a kill).
DOWNLOADED = [
    *(raw_provenance(run) for run in RUNS),
    *(f for run in RUNS for f in init_weights(run)),
    *(eval_inputs(run).get("hellaswag", []) for run in RUNS),
]
PREPARED = [*DOWNLOADED, *(prepared_dir(run) for run in RUNS)]
TRAINED = [*PREPARED, *expand(rules.train_run.output.params, run=RUNS)]


rule all:
    default_target: True
    input:
        TRAINED,
        samples=expand(rules.sample_run.output.samples, run=RUNS),
        evals=expand(rules.eval_run.output.metrics, run=RUNS),
        reports=expand(rules.report_run.output, run=RUNS),
        sweep=rules.report_sweep.output if len(RUNS) > 1 else [],


rule download:
    input:
        DOWNLOADED,


rule prepare:
    input:
        PREPARED,


rule train:
    input:
        TRAINED,


rule sample:
    input:
        TRAINED,
        samples=expand(rules.sample_run.output.samples, run=RUNS),


rule eval:
    input:
        TRAINED,
        metrics=expand(rules.eval_run.output.metrics, run=RUNS),


rule export:
    input:
        TRAINED,
        hf=expand(rules.export_run.output.weights, run=RUNS),


rule sweep:
    input:
        rules.all.input,
        lr=(
            rules.report_lr_sensitivity.output
            if "train.learning_rate" in SWEEP_AXES
            else []
        ),
