"""Small students built here, with no download, that are not real models: the tiny Llama/Qwen builder
(`tiny`: tests, the converter check), the headline-topic student (`headline`: tests, the offline
Self-Instruct demo) and the procedural world (`world`: `--demo world`). The real students are in
`builtin_students` and `models`."""
