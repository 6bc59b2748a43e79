"""Data: read MusicNet-layout folders or plain audio, build the prepared store, serve windows and labels."""
