"""The playground and the AI SDK UI message stream, in a real browser and in Node."""
