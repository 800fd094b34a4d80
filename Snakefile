# nanogptx: download -> prepare -> train -> sample, eval (export on demand), for each configured run.
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


# The stages as targets: for each, the stage it follows, its outputs of a run, and whether the
# default job builds it. `snakemake STAGE` asks for its outputs of every run and for those of
# every stage before it: Snakemake builds a missing file only when something asks for it, and a
# job cut short (a kill, Ctrl-C, a crash) has had its outputs deleted, so the samples and the
# evaluation of the model it was replacing looked up to date (docs/workflow.md: After a kill).
STAGES = {
    "download": (None, downloads, True),
    "prepare": ("download", lambda run: [prepared_dir(run)], True),
    "train": ("prepare", of_run(rules.train_run.output.params), True),
    "sample": ("train", of_run(rules.sample_run.output.samples), True),
    "eval": ("train", of_run(rules.eval_run.output.metrics), True),
    "export": ("train", of_run(rules.export_run.output.weights), False),
}


rule all:
    default_target: True
    input:
        target(*(stage for stage, (_, _, default) in STAGES.items() if default)),
        reports=expand(rules.report_run.output, run=RUNS),
        sweep=rules.report_sweep.output if len(RUNS) > 1 else [],


for stage in STAGES:

    rule:
        name:
            stage
        input:
            target(stage),


rule sweep:
    input:
        rules.all.input,
        lr=(
            rules.report_lr_sensitivity.output
            if "train.learning_rate" in SWEEP_AXES
            else []
        ),
