"""What finds recordings and who writes them: discovery, the file-system watch, writer signals.
"""
