namespace OrtLora.Training;

/// <summary>Where the Trainer's reduce_lr_on_plateau stands: the learning rate now, the best eval_loss (null before the
/// first evaluation, which any metric improves on), evaluations without improvement and the cooldown left. Kept in
/// checkpoints, so a resumed run goes on from it.</summary>
public sealed record PlateauState(double Lr, double? Best, int BadEvals, int Cooldown);

/// <summary>The Trainer's reduce_lr_on_plateau: torch's ReduceLROnPlateau, stepped with eval_loss after each evaluation
/// (not ortlora's step-0 baseline, which the Trainer does not run); no warmup. lr_scheduler_kwargs as torch names them:
/// mode (min), factor (0.1), patience (10), threshold (1e-4), threshold_mode (rel), cooldown (0), min_lr (0), eps (1e-8).</summary>
public static class ReduceLrOnPlateau
{
    public const string Name = "reduce_lr_on_plateau";

    /// <summary>The state before any evaluation (checks the mode's name).</summary>
    public static PlateauState Start(double lr, SchedulerKwargs kwargs)
    {
        kwargs.Name("mode", "min", ["min", "max"]);
        return new(lr, null, 0, 0);
    }

    public static PlateauState Step(PlateauState s, double metric, SchedulerKwargs kwargs)
    {
        double factor = kwargs.Number("factor") ?? 0.1, threshold = kwargs.Number("threshold") ?? 1e-4;
        if (factor >= 1) throw new OrtLoraException($"--lr-scheduler-kwargs: factor {factor} must be below 1");
        bool min = kwargs.Name("mode", "min", ["min", "max"]) == "min", relative = kwargs.Name("threshold_mode", "rel", ["rel", "abs"]) == "rel";
        bool better = s.Best is not { } previous ? !double.IsNaN(metric) // torch starts from ±∞, which every number beats
            : (min, relative) switch
            {
                (true, true) => metric < previous * (1 - threshold),
                (true, false) => metric < previous - threshold,
                (false, true) => metric > previous * (1 + threshold),
                (false, false) => metric > previous + threshold,
            };
        var (lr, best, bad, cooldown) = (s.Lr, better ? metric : s.Best, better ? 0 : s.BadEvals + 1, s.Cooldown);
        if (cooldown > 0) { cooldown--; bad = 0; }
        if (bad > (kwargs.Number("patience") ?? 10))
        {
            double reduced = Math.Max(lr * factor, kwargs.Number("min_lr") ?? 0);
            if (lr - reduced > (kwargs.Number("eps") ?? 1e-8)) lr = reduced;
            cooldown = (int)(kwargs.Number("cooldown") ?? 0);
            bad = 0;
        }
        return new PlateauState(lr, best, bad, cooldown);
    }
}
