namespace OrtLora;

/// <summary>An error the user can act on: bad input, a model ortlora cannot handle, an inconsistent adapter.
/// The CLI prints its message alone (no stack trace) and exits non-zero.</summary>
public sealed class OrtLoraException(string message, Exception? inner = null) : Exception(message, inner);
