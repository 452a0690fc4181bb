"""lmms-eval harness for dove-vlm: the `dove_llava` model adapter (`eval.lmms_adapter`, registered through the
`lmms_eval.models` entry point by `eval.lmms_plugin`), local VQA tasks (`eval/tasks/dove_vqa/`) and the
accuracy-vs-tokens comparison (`eval.compare`, `dove eval export|compare`)."""
