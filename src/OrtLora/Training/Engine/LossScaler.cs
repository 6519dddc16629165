namespace OrtLora.Training.Engine;

/// <summary>Dynamic loss scaling with torch.amp.GradScaler's defaults: start at 2^16; a step whose gradients are not
/// finite (float16 overflowed) is skipped and halves the scale; 2000 finite steps in a row double it.</summary>
public sealed class LossScaler
{
    public const float InitialScale = 65536f;
    public const int GrowthInterval = 2000;

    public float Scale { get; private set; }
    /// <summary>Finite steps since the scale last changed.</summary>
    public int GoodSteps { get; private set; }
    /// <summary>Steps skipped because their gradients overflowed.</summary>
    public int SkippedSteps { get; private set; }

    public LossScaler(float scale = InitialScale, int goodSteps = 0) { Scale = scale; GoodSteps = goodSteps; }

    /// <summary>Records one step's gradient norm; returns whether its update may be applied.</summary>
    public bool Update(float gradNorm)
    {
        if (!float.IsFinite(gradNorm))
        {
            Scale /= 2;
            GoodSteps = 0;
            SkippedSteps++;
            return false;
        }
        if (++GoodSteps == GrowthInterval) { Scale *= 2; GoodSteps = 0; }
        return true;
    }
}
