#!/usr/bin/env python3
"""Writes tests/OrtLora.Tests/Data/chat_templates.json: real chat templates and focused language cases rendered by
Python's jinja2 in the environment transformers' apply_chat_template uses, so the C# interpreter
(src/OrtLora/Training/Data/Jinja) is checked against the real thing rather than hand-written expectations.

    python3 tools/chat-templates/render.py            # needs jinja2 (3.1.x); transformers is not needed

See README.md next to this script for where each template came from.
"""
import datetime
import json
import re
import os
import sys

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

# strftime_now reads this clock, not the real one, so the fixture is reproducible; every case records it as "now"
# and the C# test passes the same clock to JinjaTemplate.Render.
FIXED_NOW = datetime.datetime(2024, 9, 26, 14, 30, 5)


# ---------------------------------------------------------------------------------------------------------------
# transformers' environment (transformers/utils/chat_template_utils.py, _compile_jinja_template), rebuilt here.
# ---------------------------------------------------------------------------------------------------------------
class AssistantTracker(Extension):
    """{% generation %}...{% endgeneration %}: transformers marks assistant text with it; rendering is the body's."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    @jinja2.pass_eval_context
    def _generation_support(self, context, caller):
        # With MARK_GENERATION, the body between two sentinels: where it lands in the text is the assistant mask that
        # transformers' return_assistant_tokens_mask reads (the spans are taken out of a second render).
        return GENERATION_OPEN + caller() + GENERATION_CLOSE if context.environment.mark_generation else caller()


GENERATION_OPEN, GENERATION_CLOSE = "\x02", "\x03"


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers replaces jinja2's HTML-escaping tojson with plain json.dumps.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return FIXED_NOW.strftime(format)


def make_environment(mark_generation=False):
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, jinja2.ext.loopcontrols])
    env.mark_generation = mark_generation
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = make_environment()
MARKING_ENV = make_environment(mark_generation=True)
GENERATION_TAG = re.compile(r"{%[-+]?\s*generation\s*[-+]?%}")


def generation_spans(text, variables):
    """[start, end) of each {% generation %} block's text in the render, from a render with sentinels around them, in
    UTF-16 code units (the C# string's indices; an emoji is two)."""
    marked = MARKING_ENV.from_string(text).render(**variables)
    spans, offset, start = [], 0, None
    for i, ch in enumerate(marked):
        if ch == GENERATION_OPEN:
            start = i - offset
            offset += 1
        elif ch == GENERATION_CLOSE:
            spans.append([start, i - offset])
            offset += 1
    plain = marked.replace(GENERATION_OPEN, "").replace(GENERATION_CLOSE, "")
    utf16 = lambda n: len(plain[:n].encode("utf-16-le")) // 2
    return [[utf16(a), utf16(b)] for a, b in spans]


# ---------------------------------------------------------------------------------------------------------------
# Real models' chat_template strings, verbatim, as string literals with the escapes tokenizer_config.json uses (JSON
# and Python share them: \n is a newline, \\n a backslash-n that Jinja's own string literal turns into one).
# ---------------------------------------------------------------------------------------------------------------
TEMPLATES = {}


def template(name, model, source, text):
    TEMPLATES[name] = {"model": model, "source": source, "template": text}


template("llama-2-chat", "meta-llama/Llama-2-7b-chat-hf", "verbatim (openvinotoolkit tokenizer-config test copy)",
         "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

template("llama-3.1-instruct", "meta-llama/Meta-Llama-3.1-8B-Instruct", "verbatim (openvinotoolkit tokenizer-config test copy)",
         "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n{#- This block extracts the system message, so we can slot it into the right place. #}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n{#- System message + builtin tools #}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{%- if builtin_tools is defined or tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n{%- if builtin_tools is defined %}\n    {{- \"Tools: \" + builtin_tools | reject('equalto', 'code_interpreter') | join(\", \") + \"\\n\\n\"}}\n{%- endif %}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{%- if tools is not none and not tools_in_user_message %}\n    {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n{#- Custom tools are passed in a user message with some extra guidance #}\n{%- if tools_in_user_message and not tools is none %}\n    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n        {%- set first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n    {%- else %}\n        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n{%- endif %}\n    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n    {{- first_user_message + \"<|eot_id|>\"}}\n{%- endif %}\n\n{%- for message in messages %}\n    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n        {%- if not message.tool_calls|length == 1 %}\n            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n        {%- endif %}\n        {%- set tool_call = message.tool_calls[0].function %}\n        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- \"<|python_tag|>\" + tool_call.name + \".call(\" }}\n            {%- for arg_name, arg_val in tool_call.arguments | items %}\n                {{- arg_name + '=\"' + arg_val + '\"' }}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n                {%- endif %}\n                {%- endfor %}\n            {{- \")\" }}\n        {%- else  %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n            {{- '\"parameters\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- \"}\" }}\n        {%- endif %}\n        {%- if builtin_tools is defined %}\n            {#- This means we're in ipython mode #}\n            {{- \"<|eom_id|>\" }}\n        {%- else %}\n            {{- \"<|eot_id|>\" }}\n        {%- endif %}\n    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n        {%- if message.content is mapping or message.content is iterable %}\n            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n        {%- endif %}\n        {{- \"<|eot_id|>\" }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n")

template("llama-3.2-instruct", "meta-llama/Llama-3.2-1B-Instruct", "verbatim (swift-jinja ChatTemplates.swift test copy)",
         "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n{%- if not date_string is defined %}\n    {%- if strftime_now is defined %}\n        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n    {%- else %}\n        {%- set date_string = \"26 Jul 2024\" %}\n    {%- endif %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n{#- This block extracts the system message, so we can slot it into the right place. #}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n{#- System message #}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{%- if tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{%- if tools is not none and not tools_in_user_message %}\n    {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n{#- Custom tools are passed in a user message with some extra guidance #}\n{%- if tools_in_user_message and not tools is none %}\n    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n        {%- set first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n    {%- else %}\n        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n{%- endif %}\n    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n    {{- first_user_message + \"<|eot_id|>\"}}\n{%- endif %}\n\n{%- for message in messages %}\n    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n        {%- if not message.tool_calls|length == 1 %}\n            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n        {%- endif %}\n        {%- set tool_call = message.tool_calls[0].function %}\n        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n        {{- '\"parameters\": ' }}\n        {{- tool_call.arguments | tojson }}\n        {{- \"}\" }}\n        {{- \"<|eot_id|>\" }}\n    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n        {%- if message.content is mapping or message.content is iterable %}\n            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n        {%- endif %}\n        {{- \"<|eot_id|>\" }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n")

template("mistral-7b-instruct-v0.1", "mistralai/Mistral-7B-Instruct-v0.1", "verbatim (openvinotoolkit tokenizer-config test copy)",
         "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n")

template("mistral-7b-instruct-v0.3", "mistralai/Mistral-7B-Instruct-v0.3", "verbatim (a project's copy of the tokenizer_config.json string)",
         "{%- if messages[0][\"role\"] == \"system\" %}\n    {%- set system_message = messages[0][\"content\"] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n{%- set user_messages = loop_messages | selectattr(\"role\", \"equalto\", \"user\") | list %}\n\n{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}\n{%- set ns = namespace() %}\n{%- set ns.index = 0 %}\n{%- for message in loop_messages %}\n    {%- if not (message.role == \"tool\" or message.role == \"tool_results\" or (message.tool_calls is defined and message.tool_calls is not none)) %}\n        {%- if (message[\"role\"] == \"user\") != (ns.index % 2 == 0) %}\n            {{- raise_exception(\"After the optional system message, conversation roles must alternate user/assistant/user/assistant/...\") }}\n        {%- endif %}\n        {%- set ns.index = ns.index + 1 %}\n    {%- endif %}\n{%- endfor %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n        {%- if tools is not none and (message == user_messages[-1]) %}\n            {{- \"[AVAILABLE_TOOLS][\" }}\n            {%- for tool in tools %}\n                {%- set tool = tool.function %}\n                {{- '{\"type\": \"function\", \"function\": {' }}\n                {%- for key, val in tool.items() if key != \"return\" %}\n                    {%- if val is string %}\n                        {{- '\"' + key + '\": \"' + val + '\"' }}\n                    {%- else %}\n                        {{- '\"' + key + '\": ' + val|tojson }}\n                    {%- endif %}\n                    {%- if not loop.last %}\n                        {{- \", \" }}\n                    {%- endif %}\n                {%- endfor %}\n                {{- \"}}\" }}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n                {%- else %}\n                    {{- \"]\" }}\n                {%- endif %}\n            {%- endfor %}\n            {{- \"[/AVAILABLE_TOOLS]\" }}\n            {%- endif %}\n        {%- if loop.last and system_message is defined %}\n            {{- \"[INST]\" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n        {%- else %}\n            {{- \"[INST]\" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n    {%- elif (message.tool_calls is defined and message.tool_calls is not none) %}\n        {{- \"[TOOL_CALLS][\" }}\n        {%- for tool_call in message.tool_calls %}\n            {%- set out = tool_call.function|tojson %}\n            {{- out[:-1] }}\n            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}\n                {{- raise_exception(\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n            {%- endif %}\n            {{- ', \"id\": \"' + tool_call.id + '\"}' }}\n            {%- if not loop.last %}\n                {{- \", \" }}\n            {%- else %}\n                {{- \"]\" + eos_token }}\n            {%- endif %}\n        {%- endfor %}\n    {%- elif message[\"role\"] == \"assistant\" %}\n        {{- message[\"content\"] + eos_token}}\n    {%- elif message[\"role\"] == \"tool_results\" or message[\"role\"] == \"tool\" %}\n        {%- if message.content is defined and message.content.content is defined %}\n            {%- set content = message.content.content %}\n        {%- else %}\n            {%- set content = message.content %}\n        {%- endif %}\n        {{- '[TOOL_RESULTS]{\"content\": ' + content|string + \", \" }}\n        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n            {{- raise_exception(\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n        {%- endif %}\n        {{- '\"call_id\": \"' + message.tool_call_id + '\"}[/TOOL_RESULTS]' }}\n    {%- else %}\n        {{- raise_exception(\"Only user and assistant roles are supported, with the exception of an initial optional system message!\") }}\n    {%- endif %}\n{%- endfor %}\n")

template("qwen2.5-instruct", "Qwen/Qwen2.5-7B-Instruct", "verbatim (swift-jinja ChatTemplates.swift test copy)",
         "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")

template("qwen3-thinking-2507", "Qwen/Qwen3-4B-Thinking-2507 (a Qwen3 thinking model; model_max_length 262144)",
         "verbatim (a tokenizer_config.json copied into a project's notes)",
         "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0].role == 'system' %}\n        {{- messages[0].content + '\\n\\n' }}\n    {%- endif %}\n    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0].role == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n{%- for message in messages[::-1] %}\n    {%- set index = (messages|length - 1) - loop.index0 %}\n    {%- if ns.multi_step_tool and message.role == \"user\" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}\n        {%- set ns.multi_step_tool = false %}\n        {%- set ns.last_query_index = index %}\n    {%- endif %}\n{%- endfor %}\n{%- for message in messages %}\n    {%- if message.content is string %}\n        {%- set content = message.content %}\n    {%- else %}\n        {%- set content = '' %}\n    {%- endif %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {%- set reasoning_content = '' %}\n        {%- if message.reasoning_content is string %}\n            {%- set reasoning_content = message.reasoning_content %}\n        {%- else %}\n            {%- if '</think>' in content %}\n                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n            {%- endif %}\n        {%- endif %}\n        {%- if loop.index0 > ns.last_query_index %}\n            {%- if loop.last or (not loop.last and reasoning_content) %}\n                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n            {%- else %}\n                {{- '<|im_start|>' + message.role + '\\n' + content }}\n            {%- endif %}\n        {%- else %}\n            {{- '<|im_start|>' + message.role + '\\n' + content }}\n        {%- endif %}\n        {%- if message.tool_calls %}\n            {%- for tool_call in message.tool_calls %}\n                {%- if (loop.first and content) or (not loop.first) %}\n                    {{- '\\n' }}\n                {%- endif %}\n                {%- if tool_call.function %}\n                    {%- set tool_call = tool_call.function %}\n                {%- endif %}\n                {{- '<tool_call>\\n{\"name\": \"' }}\n                {{- tool_call.name }}\n                {{- '\", \"arguments\": ' }}\n                {%- if tool_call.arguments is string %}\n                    {{- tool_call.arguments }}\n                {%- else %}\n                    {{- tool_call.arguments | tojson }}\n                {%- endif %}\n                {{- '}\\n</tool_call>' }}\n            {%- endfor %}\n        {%- endif %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n<think>\\n' }}\n{%- endif %}")

template("qwen3-coder", "Qwen/Qwen3-Coder-30B-A3B-Instruct", "verbatim (swift-jinja ChatTemplates.swift raw-string test copy, its 8-space indent removed as Swift does)",
         "{% macro render_item_list(item_list, tag_name='required') %}\n    {%- if item_list is defined and item_list is iterable and item_list | length > 0 %}\n        {%- if tag_name %}{{- '\\n<' ~ tag_name ~ '>' -}}{% endif %}\n            {{- '[' }}\n                {%- for item in item_list -%}\n                    {%- if loop.index > 1 %}{{- \", \"}}{% endif -%}\n                    {%- if item is string -%}\n                        {{ \"`\" ~ item ~ \"`\" }}\n                    {%- else -%}\n                        {{ item }}\n                    {%- endif -%}\n                {%- endfor -%}\n            {{- ']' }}\n        {%- if tag_name %}{{- '</' ~ tag_name ~ '>' -}}{% endif %}\n    {%- endif %}\n{% endmacro %}\n\n{%- if messages[0][\"role\"] == \"system\" %}\n    {%- set system_message = messages[0][\"content\"] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{%- if not tools is defined %}\n    {%- set tools = [] %}\n{%- endif %}\n\n{%- if system_message is defined %}\n    {{- \"<|im_start|>system\\n\" + system_message }}\n{%- else %}\n    {%- if tools is iterable and tools | length > 0 %}\n        {{- \"<|im_start|>system\\nYou are Qwen, a helpful AI assistant that can interact with a computer to solve tasks.\" }}\n    {%- endif %}\n{%- endif %}\n{%- if tools is iterable and tools | length > 0 %}\n    {{- \"\\n\\nYou have access to the following functions:\\n\\n\" }}\n    {{- \"<tools>\" }}\n    {%- for tool in tools %}\n        {%- if tool.function is defined %}\n            {%- set tool = tool.function %}\n        {%- endif %}\n        {{- \"\\n<function>\\n<name>\" ~ tool.name ~ \"</name>\" }}\n        {{- '\\n<description>' ~ (tool.description | trim) ~ '</description>' }}\n        {{- '\\n<parameters>' }}\n        {%- for param_name, param_fields in tool.parameters.properties|items %}\n            {{- '\\n<parameter>' }}\n            {{- '\\n<name>' ~ param_name ~ '</name>' }}\n            {%- if param_fields.type is defined %}\n                {{- '\\n<type>' ~ (param_fields.type | string) ~ '</type>' }}\n            {%- endif %}\n            {%- if param_fields.description is defined %}\n                {{- '\\n<description>' ~ (param_fields.description | trim) ~ '</description>' }}\n            {%- endif %}\n            {{- render_item_list(param_fields.enum, 'enum') }}\n            {%- set handled_keys = ['type', 'description', 'enum', 'required'] %}\n            {%- for json_key in param_fields.keys() | reject(\"in\", handled_keys) %}\n                {%- set normed_json_key = json_key | replace(\"-\", \"_\") | replace(\" \", \"_\") | replace(\"$\", \"\") %}\n                {%- if param_fields[json_key] is mapping %}\n                    {{- '\\n<' ~ normed_json_key ~ '>' ~ (param_fields[json_key] | tojson | safe) ~ '</' ~ normed_json_key ~ '>' }}\n                {%- else %}\n                    {{-'\\n<' ~ normed_json_key ~ '>' ~ (param_fields[json_key] | string) ~ '</' ~ normed_json_key ~ '>' }}\n                {%- endif %}\n            {%- endfor %}\n            {{- render_item_list(param_fields.required, 'required') }}\n            {{- '\\n</parameter>' }}\n        {%- endfor %}\n        {{- render_item_list(tool.parameters.required, 'required') }}\n        {{- '\\n</parameters>' }}\n        {%- if tool.return is defined %}\n            {%- if tool.return is mapping %}\n                {{- '\\n<return>' ~ (tool.return | tojson | safe) ~ '</return>' }}\n            {%- else %}\n                {{- '\\n<return>' ~ (tool.return | string) ~ '</return>' }}\n            {%- endif %}\n        {%- endif %}\n        {{- '\\n</function>' }}\n    {%- endfor %}\n    {{- \"\\n</tools>\" }}\n    {{- '\\n\\nIf you choose to call a function ONLY reply in the following format with NO suffix:\\n\\n<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n</parameter>\\n<parameter=example_parameter_2>\\nThis is the value for the second parameter\\nthat can span\\nmultiple lines\\n</parameter>\\n</function>\\n</tool_call>\\n\\n<IMPORTANT>\\nReminder:\\n- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\\n- Required parameters MUST be specified\\n- You may provide optional reasoning for your function call in natural language BEFORE the function call, but NOT after\\n- If there is no function call available, answer the question like normal with your current knowledge and do not tell the user about function calls\\n</IMPORTANT>' }}\n{%- endif %}\n{%- if system_message is defined %}\n    {{- '<|im_end|>\\n' }}\n{%- else %}\n    {%- if tools is iterable and tools | length > 0 %}\n        {{- '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in loop_messages %}\n    {%- if message.role == \"assistant\" and message.tool_calls is defined and message.tool_calls is iterable and message.tool_calls | length > 0 %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content is defined and message.content is string and message.content | trim | length > 0 %}\n            {{- '\\n' + message.content | trim + '\\n' }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n<function=' + tool_call.name + '>\\n' }}\n            {%- if tool_call.arguments is defined %}\n                {%- for args_name, args_value in tool_call.arguments|items %}\n                    {{- '<parameter=' + args_name + '>\\n' }}\n                    {%- set args_value = args_value if args_value is string else args_value | string %}\n                    {{- args_value }}\n                    {{- '\\n</parameter>\\n' }}\n                {%- endfor %}\n            {%- endif %}\n            {{- '</function>\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"user\" or message.role == \"system\" or message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if loop.previtem and loop.previtem.role != \"tool\" %}\n            {{- '<|im_start|>user\\n' }}\n        {%- endif %}\n        {{- '<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>\\n' }}\n        {%- if not loop.last and loop.nextitem.role != \"tool\" %}\n            {{- '<|im_end|>\\n' }}\n        {%- elif loop.last %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- else %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}")

template("smollm3", "HuggingFaceTB/SmolLM3-3B", "verbatim (swift-jinja ChatTemplates.swift raw-string test copy, its 8-space indent removed as Swift does)",
         "{# ───── defaults ───── #}\n{%- if enable_thinking is not defined -%}\n{%- set enable_thinking = true -%}\n{%- endif -%}\n\n{# ───── reasoning mode ───── #}\n{%- if enable_thinking -%}\n{%- set reasoning_mode = \"/think\" -%}\n{%- else -%}\n{%- set reasoning_mode = \"/no_think\" -%}\n{%- endif -%}\n\n{# ───── header (system message) ───── #}\n{{- \"<|im_start|>system\\n\" -}}\n\n{%- if messages[0].role == \"system\" -%}\n{%- set system_message = messages[0].content -%}\n{%- if \"/no_think\" in system_message -%}\n{%- set reasoning_mode = \"/no_think\" -%}\n{%- elif \"/think\" in system_message -%}\n{%- set reasoning_mode = \"/think\" -%}\n{%- endif -%}\n{%- set custom_instructions = system_message.replace(\"/no_think\", \"\").replace(\"/think\", \"\").rstrip() -%}\n{%- endif -%}\n\n{%- if \"/system_override\" in system_message -%}\n{{- custom_instructions.replace(\"/system_override\", \"\").rstrip() -}}\n{{- \"<|im_end|>\\n\" -}}\n{%- else -%}\n{{- \"## Metadata\\n\\n\" -}}\n{{- \"Knowledge Cutoff Date: June 2025\\n\" -}}\n{%- set today = strftime_now(\"%d %B %Y\") -%}\n{{- \"Today Date: \" ~ today ~ \"\\n\" -}}\n{{- \"Reasoning Mode: \" + reasoning_mode + \"\\n\\n\" -}}\n\n{{- \"## Custom Instructions\\n\\n\" -}}\n{%- if custom_instructions -%}\n{{- custom_instructions + \"\\n\\n\" -}}\n{%- elif reasoning_mode == \"/think\" -%}\n{{- \"You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an assistant involves thoroughly exploring questions through a systematic thinking process before providing the final precise and accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, exploration, reassessment, reflection, backtracking, and iteration to develop well-considered thinking process. Please structure your response into two main sections: Thought and Solution using the specified format: <think> Thought section </think> Solution section. In the Thought section, detail your reasoning process in steps. Each step should include detailed considerations such as analysing questions, summarizing relevant findings, brainstorming new ideas, verifying the accuracy of the current steps, refining any errors, and revisiting previous steps. In the Solution section, based on various attempts, explorations, and reflections from the Thought section, systematically present the final solution that you deem correct. The Solution section should be logical, accurate, and concise and detail necessary steps needed to reach the conclusion.\\n\\n\" -}}\n{%- else -%}\n{{- \"You are a helpful AI assistant named SmolLM, trained by Hugging Face.\\n\\n\" -}}\n{%- endif -%}\n\n{%- if xml_tools or python_tools -%}\n{{- \"### Tools\\n\\n\" -}}\n{%- if xml_tools -%}\n  {%- set ns = namespace(xml_tool_string=\"You may call one or more functions to assist with the user query.\\nYou are provided with function signatures within <tools></tools> XML tags:\\n\\n<tools>\\n\") -%}\n  {%- for tool in xml_tools[:] -%} {# The slicing makes sure that xml_tools is a list #}\n    {%- set ns.xml_tool_string = ns.xml_tool_string ~ (tool | string) ~ \"\\n\" -%}\n  {%- endfor -%}\n  {%- set xml_tool_string = ns.xml_tool_string + \"</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call>\" -%}\n  {{- xml_tool_string -}}\n{%- endif -%}\n{%- if python_tools -%}\n  {%- set ns = namespace(python_tool_string=\"When you send a message containing Python code between '<code>' and '</code>' tags, it will be executed in a stateful Jupyter notebook environment, and you will then be given the output to continued reasoning in an agentic loop.\\n\\nYou can use the following tools in your python code like regular functions:\\n<tools>\\n\") -%}\n  {%- for tool in python_tools[:] -%} {# The slicing makes sure that python_tools is a list #}\n    {%- set ns.python_tool_string = ns.python_tool_string ~ (tool | string) ~ \"\\n\" -%}\n  {%- endfor -%}\n  {%- set python_tool_string = ns.python_tool_string + \"</tools>\\n\\nThe state persists between code executions: so variables that you define in one step are still available thereafter.\" -%}\n  {{- python_tool_string -}}\n{%- endif -%}\n{{- \"\\n\\n\" -}}\n{{- \"<|im_end|>\\n\" -}}\n{%- endif -%}\n{%- endif -%}\n{# ───── main loop ───── #}\n{%- for message in messages -%}\n{%- set content = message.content if message.content is string else \"\" -%}\n{%- if message.role == \"user\" -%}\n    {{ \"<|im_start|>\" + message.role + \"\\n\"  + content + \"<|im_end|>\\n\" }}\n{%- elif message.role == \"assistant\" -%}\n    {% generation %}\n    {%- if reasoning_mode == \"/think\" -%}\n        {{ \"<|im_start|>assistant\\n\" + content.lstrip(\"\\n\") + \"<|im_end|>\\n\" }}\n    {%- else -%}\n        {{ \"<|im_start|>assistant\\n\" + \"<think>\\n\\n</think>\\n\" + content.lstrip(\"\\n\") + \"<|im_end|>\\n\" }}\n    {%- endif -%}\n    {% endgeneration %}\n{%- elif message.role == \"tool\" -%}\n{{ \"<|im_start|>\" + \"user\\n\"  + content + \"<|im_end|>\\n\" }}\n{%- endif -%}\n{%- endfor -%}\n{# ───── generation prompt ───── #}\n{%- if add_generation_prompt -%}\n{%- if reasoning_mode == \"/think\" -%}\n    {{ \"<|im_start|>assistant\\n\" }}\n{%- else -%}\n    {{ \"<|im_start|>assistant\\n\" + \"<think>\\n\\n</think>\\n\"  }}\n{%- endif -%}\n{%- endif -%}")

template("granite-3.3-instruct", "ibm-granite/granite-3.3-8b-instruct", "verbatim (swift-jinja ChatTemplates.swift test copy)",
         "{# Alias tools -> available_tools #}\n{%- if tools and not available_tools -%}\n    {%- set available_tools = tools -%}\n{%- endif -%}\n{%- if messages[0]['role'] == 'system' %}\n     {%- set system_message = messages[0]['content'] %}\n     {%- set loop_messages = messages[1:] %}\n {%- else %}\n     {%- set system_message = \"Knowledge Cutoff Date: April 2024.\\nToday's Date: \" + strftime_now('%B %d, %Y') + \".\\nYou are Granite, developed by IBM.\" %}\n     {%- if available_tools and documents %}\n         {%- set system_message = system_message + \" You are a helpful assistant with access to the following tools. When a tool is required to answer the user's query, respond only with <|tool_call|> followed by a JSON list of tools used. If a tool does not exist in the provided list of tools, notify the user that you do not have the ability to fulfill the request.\\nWrite the response to the user's input by strictly aligning with the facts in the provided documents. If the information needed to answer the question is not available in the documents, inform the user that the question cannot be answered based on the available data.\" %}\n     {%- elif available_tools %}\n         {%- set system_message = system_message + \" You are a helpful assistant with access to the following tools. When a tool is required to answer the user's query, respond only with <|tool_call|> followed by a JSON list of tools used. If a tool does not exist in the provided list of tools, notify the user that you do not have the ability to fulfill the request.\" %}\n     {%- elif documents %}\n         {%- set system_message = system_message + \" Write the response to the user's input by strictly aligning with the facts in the provided documents. If the information needed to answer the question is not available in the documents, inform the user that the question cannot be answered based on the available data.\" %}\n    {%- elif thinking %}\n    {%- set system_message = system_message + \" You are a helpful AI assistant.\\nRespond to every user query in a comprehensive and detailed way. You can write down your thoughts and reasoning process before responding. In the thought process, engage in a comprehensive cycle of analysis, summarization, exploration, reassessment, reflection, backtracing, and iteration to develop well-considered thinking process. In the response section, based on various attempts, explorations, and reflections from the thoughts section, systematically present the final solution that you deem correct. The response should summarize the thought process. Write your thoughts between <think></think> and write your response between <response></response> for each user query.\" %}\n     {%- else %}\n         {%- set system_message = system_message + \" You are a helpful AI assistant.\" %}\n     {%- endif %}\n     {%- if 'citations' in controls and documents %}\n         {%- set system_message = system_message + '\\nUse the symbols <|start_of_cite|> and <|end_of_cite|> to indicate when a fact comes from a document in the search result, e.g <|start_of_cite|> {document_id: 1}my fact <|end_of_cite|> for a fact from document 1. Afterwards, list all the citations with their corresponding documents in an ordered list.' %}\n     {%- endif %}\n     {%- if 'hallucinations' in controls and documents %}\n         {%- set system_message = system_message + '\\nFinally, after the response is written, include a numbered list of sentences from the response with a corresponding risk value that are hallucinated and not based in the documents.' %}\n     {%- endif %}\n     {%- set loop_messages = messages %}\n {%- endif %}\n {{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\\n' }}\n {%- if available_tools %}\n     {{- '<|start_of_role|>available_tools<|end_of_role|>' }}\n     {{- available_tools | tojson(indent=4) }}\n     {{- '<|end_of_text|>\\n' }}\n {%- endif %}\n {%- if documents %}\n     {%- for document in documents %}\n         {{- '<|start_of_role|>document {\"document_id\": \"' + document['doc_id'] | string + '\"}<|end_of_role|>\\n' }}\n         {{- document['text'] }}\n         {{- '<|end_of_text|>\\n' }}\n              {%- endfor %}\n {%- endif %}\n {%- for message in loop_messages %}\n     {{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\\n' }}\n     {%- if loop.last and add_generation_prompt %}\n         {{- '<|start_of_role|>assistant' }}\n             {%- if controls %}\n                 {{- ' ' + controls | tojson()}}\n             {%- endif %}\n         {{- '<|end_of_role|>' }}\n     {%- endif %}\n {%- endfor %}")

template("smollm2-instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "verbatim (a project's copy of the GGUF tokenizer.chat_template)",
         "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

template("tinyllama-chat", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "verbatim (openvinotoolkit tokenizer-config test copy)",
         "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

template("gemma-it", "google/gemma-7b-it (Gemma 2 -it ships the same template)", "verbatim (openvinotoolkit tokenizer-config test copy)",
         "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

template("gemma-3-it", "google/gemma-3-1b-it", "verbatim (a transformers.js worker's copy of the tokenizer_config.json string)",
         "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n")

template("phi-3-mini-instruct", "microsoft/Phi-3-mini-4k-instruct", "verbatim (openvinotoolkit tokenizer-config test copy)",
         "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

template("deepseek-r1", "deepseek-ai/DeepSeek-R1", "verbatim (gorilla BFCL handler's copy of the tokenizer_config.json string)",
         "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and 'tool_calls' in message %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls'] %}{%- if not ns.is_first %}{%- if message['content'] is none %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}{%- set ns.is_first = true -%}{%- else %}{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}{%- endfor %}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- if message['role'] == 'assistant' and 'tool_calls' not in message %}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}")

template("deepseek-coder-instruct", "deepseek-ai/deepseek-coder-6.7b-instruct", "verbatim (openvinotoolkit tokenizer-config test copy)",
         "{% if not add_generation_prompt is defined %}\n{% set add_generation_prompt = false %}\n{% endif %}\n{%- set ns = namespace(found=false) -%}\n{%- for message in messages -%}\n    {%- if message['role'] == 'system' -%}\n        {%- set ns.found = true -%}\n    {%- endif -%}\n{%- endfor -%}\n{{bos_token}}{%- if not ns.found -%}\n{{'You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, and you only answer questions related to computer science. For politically sensitive questions, security and privacy issues, and other non-computer science questions, you will refuse to answer\\n'}}\n{%- endif %}\n{%- for message in messages %}\n    {%- if message['role'] == 'system' %}\n{{ message['content'] }}\n    {%- else %}\n        {%- if message['role'] == 'user' %}\n{{'### Instruction:\\n' + message['content'] + '\\n'}}\n        {%- else %}\n{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{% if add_generation_prompt %}\n{{'### Response:'}}\n{% endif %}")

template("openchat-3.5", "openchat/openchat-3.5-0106", "verbatim (openvinotoolkit tokenizer-config test copy)",
         "{{ bos_token }}{% for message in messages %}{{ 'GPT4 Correct ' + message['role'].title() + ': ' + message['content'] + '<|end_of_turn|>'}}{% endfor %}{% if add_generation_prompt %}{{ 'GPT4 Correct Assistant:' }}{% endif %}")

template("falcon-rw-1b-chat", "ericzzz/falcon-rw-1b-chat", "verbatim (openvinotoolkit tokenizer-config test copy)",
         "{% for message in messages %}{% if loop.index > 1 and loop.previtem['role'] != 'assistant' %}{{ ' ' }}{% endif %}{% if message['role'] == 'system' %}{{ '[SYS] ' + message['content'].strip() }}{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'].strip() }}{% elif message['role'] == 'assistant' %}{{ '[RESP] '  + message['content'] + eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ ' [RESP] ' }}{% endif %}")

template("dbrx-instruct", "databricks/dbrx-instruct", "verbatim (openvinotoolkit tokenizer-config test copy)",
         "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% elif 'system' not in messages[0]['role'] %}{% set loop_messages = messages %}{% set system_message = 'You are DBRX, created by Databricks. You were last updated in December 2023. You answer questions based on information available up to that point.\nYOU PROVIDE SHORT RESPONSES TO SHORT QUESTIONS OR STATEMENTS, but provide thorough responses to more complex and open-ended questions.\nYou assist with various tasks, from writing to coding (using markdown for code blocks \u2014 remember to use ``` with code, JSON, and tables).\n(You do not have real-time data access or code execution capabilities. You avoid stereotyping and provide balanced perspectives on controversial topics. You do not provide song lyrics, poems, or news articles and do not divulge details of your training data.)\nThis is your system prompt, guiding your responses. Do not reference it, just respond to the user. If you find yourself talking about this message, stop. You should be responding appropriately and usually that means not mentioning this.\nYOU DO NOT MENTION ANY OF THIS INFORMATION ABOUT YOURSELF UNLESS THE INFORMATION IS DIRECTLY PERTINENT TO THE USER\\'S QUERY.' %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if loop.index0 == 0 %}{% if system_message != false %}{{ '<|im_start|>system\n' + system_message | trim + '<|im_end|>\n'}}{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}{% else %}{{ '\n' + '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}{% endif %}{% if (add_generation_prompt == true and loop.last) %}{{ '\n' + '<|im_start|>' + 'assistant' + '\n' }}{% endif %}{% endfor %}")


# ---------------------------------------------------------------------------------------------------------------
# Conversations each real template renders, with and without the generation prompt.
# ---------------------------------------------------------------------------------------------------------------
def msg(role, content, **extra):
    return {"role": role, "content": content, **extra}


CONVERSATIONS = {
    "system_user_assistant": [msg("system", "You are a helpful assistant."), msg("user", "What is the capital of France?"),
                              msg("assistant", "The capital of France is Paris.")],
    "multi_turn": [msg("system", "Be brief."), msg("user", "Hi!"), msg("assistant", "Hello. How can I help?"),
                   msg("user", "Name two colors."), msg("assistant", "Red and blue."), msg("user", "One more?")],
    "no_system": [msg("user", "Translate 'good morning' to German."), msg("assistant", "Guten Morgen."),
                  msg("user", "And to French?")],
    "single_user": [msg("user", "Hello there, who are you?")],
    "unicode_and_quotes": [
        msg("system", "Réponds en français — s'il te plaît. \"Quotes\" and 'apostrophes'."),
        msg("user", "  Ünïcödé: 中文, emoji 😀, tab\there, backslash \\ and {{ braces }} {% tags %}  \n"),
        msg("assistant", "\n  C'est « bon » : 1 < 2 & 3 > 2.  \n\n")],
    "empty_content": [msg("system", ""), msg("user", ""), msg("assistant", "")],
    "starts_with_assistant": [msg("assistant", "I speak first."), msg("user", "Odd.")],
    "unknown_role": [msg("user", "Hi"), msg("narrator", "Meanwhile..."), msg("assistant", "Hello")],
    "reasoning": [msg("user", "What is 2+2?"), msg("assistant", "<think>\nAdd them.\n</think>\n\n2+2 is 4."),
                  msg("user", "And 3+3?")],
}

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. \"Paris\""},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "x-display": {"short": True}},
        "days": {"type": "integer", "minimum": 1, "maximum": 7.5}},
        "required": ["city"]}}}

TOOL_CONVERSATION = [
    msg("system", "You can look up the weather."),
    msg("user", "What's the weather in Paris?"),
    msg("assistant", "", tool_calls=[{"id": "call12345", "type": "function",
                                      "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]),
    msg("tool", "{\"temperature\": 21.5, \"sky\": \"clear\"}", tool_call_id="call12345", name="get_weather"),
    msg("assistant", "It is 21.5 °C and clear in Paris."),
]

# DeepSeek's template concatenates the arguments, so they are the JSON text there.
TOOL_CONVERSATION_STRING_ARGUMENTS = [
    msg("user", "What's the weather in Paris?"),
    msg("assistant", None, tool_calls=[{"id": "call12345", "type": "function",
                                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]),
    msg("tool", "{\"temperature\": 21.5}"),
    msg("assistant", "It is 21.5 °C in Paris."),
]

GEMMA_PARTS = [
    {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  What animal is this?  "}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Cat."}]},
]

# Which templates get the tool conversations (the others ignore or reject tool messages).
TOOL_TEMPLATES = {"llama-3.1-instruct", "llama-3.2-instruct", "mistral-7b-instruct-v0.3", "qwen2.5-instruct",
                  "qwen3-thinking-2507", "qwen3-coder", "granite-3.3-instruct"}

DOCUMENTS = [{"doc_id": 1, "text": "Paris is the capital of France."}, {"doc_id": "b", "text": "It has 2.1 million people."}]

SPECIAL_TOKENS = {
    "llama-2-chat": ("<s>", "</s>"), "llama-3.1-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.2-instruct": ("<|begin_of_text|>", "<|eot_id|>"), "mistral-7b-instruct-v0.1": ("<s>", "</s>"),
    "mistral-7b-instruct-v0.3": ("<s>", "</s>"), "qwen2.5-instruct": ("", "<|im_end|>"),
    "qwen3-thinking-2507": ("", "<|im_end|>"), "qwen3-coder": ("", "<|im_end|>"),
    "smollm2-instruct": ("<|im_start|>", "<|im_end|>"), "tinyllama-chat": ("<s>", "</s>"),
    "gemma-it": ("<bos>", "<eos>"), "gemma-3-it": ("<bos>", "<eos>"), "phi-3-mini-instruct": ("<s>", "<|endoftext|>"),
    "deepseek-r1": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "deepseek-coder-instruct": ("<｜begin▁of▁sentence｜>", "<|EOT|>"), "openchat-3.5": ("<s>", "<|end_of_turn|>"),
    "falcon-rw-1b-chat": ("<|endoftext|>", "<|endoftext|>"), "dbrx-instruct": ("<|endoftext|>", "<|endoftext|>"),
    "smollm3": ("", "<|im_end|>"), "granite-3.3-instruct": ("", "<|end_of_text|>"),
}


def chat_cases():
    for name, info in TEMPLATES.items():
        bos, eos = SPECIAL_TOKENS[name]
        conversations = dict(CONVERSATIONS)
        if name in TOOL_TEMPLATES:
            conversations["tools"] = (TOOL_CONVERSATION, {"tools": [WEATHER_TOOL]})
            conversations["tool_messages_without_tools"] = (TOOL_CONVERSATION, {"tools": None})
        if name == "deepseek-r1":
            conversations["tools"] = (TOOL_CONVERSATION_STRING_ARGUMENTS, {})
        if name.startswith("gemma-3"):
            conversations["content_parts"] = GEMMA_PARTS
        if name.startswith("llama-3"):
            conversations["custom_date"] = (CONVERSATIONS["single_user"], {"date_string": "01 Jan 2025"})
        if name == "granite-3.3-instruct":
            conversations["documents_and_controls"] = (CONVERSATIONS["no_system"], {
                "documents": DOCUMENTS, "tools": [WEATHER_TOOL], "controls": {"citations": True, "length": "short"}})
            conversations["thinking"] = (CONVERSATIONS["single_user"], {"thinking": True, "documents": None})
        if name == "smollm3":
            conversations["no_think_and_tools"] = (CONVERSATIONS["multi_turn"], {
                "enable_thinking": False, "xml_tools": [WEATHER_TOOL], "python_tools": [WEATHER_TOOL["function"]]})
            conversations["system_override"] = ([msg("system", "Just this. /system_override /no_think  "),
                                                 msg("user", "Hi"), msg("assistant", "\n\nHello")], {})
        for conversation, value in conversations.items():
            messages, extra = value if isinstance(value, tuple) else (value, {})
            for add_generation_prompt in (False, True):
                variables = {"messages": messages, "add_generation_prompt": add_generation_prompt,
                             "bos_token": bos, "eos_token": eos, **extra}
                suffix = "gen" if add_generation_prompt else "nogen"
                yield f"{name}/{conversation}/{suffix}", info["template"], variables


# ---------------------------------------------------------------------------------------------------------------
# Focused cases for the language itself.
# ---------------------------------------------------------------------------------------------------------------
PEOPLE = [{"name": "Ann", "age": 31, "role": "user", "tags": ["a", "b"]},
          {"name": "bob", "age": 25, "role": "assistant"},
          {"name": "Cy", "age": 31, "role": "user", "score": 2.5}]

LANGUAGE = [
    # whitespace control, trim_blocks, lstrip_blocks
    ("ws/trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter\n", {}),
    ("ws/lstrip_blocks", "  {% if true %}\n    x\n  {% endif %}\n  {{ 'v' }}\n", {}),
    ("ws/minus_both_sides", "a  \n  {%- if true -%}  \n  b  \n  {%- endif -%}\n  c", {}),
    ("ws/plus_disables", "  {%+ if true +%}\nx\n  {% endif +%}\ny", {}),
    ("ws/variable_minus", "a   {{- 'b' -}}   c\n d {{- 'e' }} \n", {}),
    ("ws/variable_not_lstripped", "  {{ 'x' }}\n  {% if true %}y{% endif %}", {}),
    ("ws/not_line_start", "{{ 'a' }}  {% if true %}b{% endif %}  {# c #}  d", {}),
    ("ws/comments", "a\n  {# comment #}\nb\n  {#- c -#}  \nd\n{# multi\nline #}\ne", {}),
    ("ws/trailing_newline_dropped", "x\n", {}),
    ("ws/two_trailing_newlines", "x\n\n", {}),
    ("ws/crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc\r\n", {}),
    ("ws/tabs_lstrip", "\t {% for i in [1, 2] %}\n\t{{ i }}\n\t {% endfor %}\n", {}),
    ("ws/minus_eats_newlines", "{% for i in [1, 2, 3] -%}\n\n  {{ i }}\n{%- endfor %}", {}),
    ("ws/raw", "{% raw %}{{ not }} {% evaluated %}{% endraw %}|{%- raw -%}  x  {%- endraw -%}  |", {}),
    ("ws/start_of_template", "   {% if true %}x{% endif %}", {}),
    ("ws/block_end_then_text", "{% if true %}   \nx{% endif %}", {}),
    # expressions and printing
    ("print/python_values", "{{ none }}|{{ true }}|{{ false }}|{{ 1 }}|{{ -3 }}|{{ 2.0 }}|{{ 0.1 + 0.2 }}|{{ 1e16 }}|"
     "{{ 1.5e-5 }}|{{ 123456789.125 }}|{{ 1/3 }}|{{ 10 / 5 }}", {}),
    ("print/containers", "{{ [1, 'a', none, true, 2.5] }}|{{ {'k': 'v', 'n': [1, {'x': none}]} }}|{{ ('a',) }}|"
     "{{ ('a', 1) }}|{{ [] }}|{{ {} }}|{{ () }}", {}),
    ("print/string_repr", "{{ [\"it's\", 'say \"hi\"', 'both \\' \"', 'tab\\tnl\\n', 'back\\\\slash', 'é😀'] }}", {}),
    ("print/variables", "{{ messages }}|{{ messages[0] }}|{{ n }}|{{ f }}|{{ b }}", {
        "messages": [{"role": "user", "content": "hi"}], "n": 7, "f": 3.0, "b": False}),
    ("print/undefined", "[{{ missing }}][{{ missing is defined }}][{{ missing is undefined }}][{{ missing | default('d') }}]"
     "[{{ none | default('d') }}][{{ '' | default('d', true) }}][{{ 0 | d('z', boolean=true) }}]", {}),
    ("print/tuple_expression", "{{ 1, 'b' }}", {}),
    ("literals/strings", "{{ 'a\\'b' }}|{{ \"c\\\"d\" }}|{{ 'x\\ny' }}|{{ '\\u00e9\\x41' }}|{{ 'no\\qescape' }}|{{ 'ad' 'jacent' }}", {}),
    ("literals/numbers", "{{ 1_000 }}|{{ 0.5 }}|{{ 2e3 }}|{{ 0x1F }}|{{ 0 }}|{{ 0.0 }}|{{ 1_0.5_0 }}", {}),
    ("operators/arithmetic", "{{ 7 + 3 }} {{ 7 - 10 }} {{ 7 * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} "
     "{{ -7 % 3 }} {{ 7.5 % 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2 ** 0.5 }} {{ -2 ** 2 }} {{ 1 + 2.5 }} {{ true + 1 }}", {}),
    ("operators/strings_lists", "{{ 'ab' + 'cd' }} {{ 'ab' * 3 }} {{ [1] + [2, 3] }} {{ [0] * 3 }} {{ 'x' ~ 1 ~ none ~ true }}"
     " {{ 'a' ~ [1] }}", {}),
    ("operators/comparison", "{{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 2 >= 2 }} "
     "{{ 'a' != 'A' }} {{ none == none }} {{ none == false }} {{ {'a': 1} == {'a': 1} }} {{ (1, 2) == (1, 2) }}", {}),
    ("operators/in", "{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'x' not in 'abc' }} "
     "{{ 'x' in missing }} {{ 1.0 in [1] }}", {}),
    ("operators/logic", "{{ 0 or 'a' }}|{{ 'x' and 'y' }}|{{ '' and 'y' }}|{{ none or [] or 'z' }}|{{ not 0 }}|"
     "{{ not 'a' }}|{{ not missing }}|{{ 1 if 0 else 2 }}|{{ 'yes' if [1] }}|{{ 'no' if [] }}|", {}),
    ("operators/precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ - 3 + 4 }} {{ 'a' ~ 1 * 2 }} {{ ('a' ~ 1) + 'b' }} "
     "{{ '  x ' | trim + 'y' }} {{ not true or true }} {{ -'3' | int }}", {}),
    # attribute and item access
    ("access/dict_attr_and_item", "{{ d.name }} {{ d['name'] }} {{ d.items is callable }} {{ d['items'] }} {{ d.missing }}|"
     "{{ d.get('name') }} {{ d.get('nope', 'dflt') }} {{ d.get('nope') }}", {"d": {"name": "Ann", "items": 3}}),
    ("access/list_index", "{{ l[0] }} {{ l[-1] }} {{ l[10] }}|{{ l.0 }} {{ 'abc'[1] }} {{ 'abc'[-1] }} {{ t[1] }}",
     {"l": [1, 2, 3], "t": ["x", "y"]}),
    ("access/slicing", "{{ l[1:] }} {{ l[:-1] }} {{ l[::-1] }} {{ l[::2] }} {{ l[1:3] }} {{ l[5:] }} {{ l[-2:] }} "
     "{{ l[3:1:-1] }} {{ 'hello'[1:4] }} {{ 'hello'[::-1] }} {{ 'héllo😀'[::-1] }} {{ 'abc'[:] }}",
     {"l": [0, 1, 2, 3, 4]}),
    ("access/nested_messages", "{{ messages[0]['content'] }} {{ messages[-1].role }} {{ messages | length }}",
     {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}),
    # statements
    ("loop/variables", "{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
     "{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}[{{ loop.previtem }}|{{ loop.nextitem }}];"
     "{% endfor %}", {}),
    ("loop/else_and_filter", "{% for x in [] %}x{% else %}empty{% endfor %}|{% for x in range(10) if x is odd %}"
     "{{ x }}{{ ',' if not loop.last }}{% endfor %}|{% for x in [0] if false %}{% else %}none{% endfor %}", {}),
    ("loop/break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x > 5 %}"
     "{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("loop/unpacking", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for a, b in [[1, 2], (3, 4)] %}"
     "{{ a + b }}{% endfor %}{% for k, v in d | items %}{{ k }}{% endfor %}", {"d": {"z": 1, "a": [2]}}),
    ("loop/over_dict_and_string", "{% for k in d %}{{ k }}{% endfor %}|{% for c in 'héy' %}{{ c }}.{% endfor %}",
     {"d": {"b": 1, "a": 2}}),
    ("loop/nested_loop_var", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ b }}{% endfor %}"
     "{{ loop.index }};{% endfor %}", {}),
    ("loop/cycle", "{% for x in range(5) %}{{ loop.cycle('a', 'b') }}{% endfor %}", {}),
    ("scope/loop_does_not_leak", "{% set x = 'outer' %}{% for i in [1, 2] %}[{{ x }}]{% set x = i %}[{{ x }}]"
     "{% endfor %}{{ x }}", {}),
    ("scope/if_leaks", "{% if true %}{% set y = 'set in if' %}{% endif %}{{ y }}", {}),
    ("scope/namespace", "{% set ns = namespace(count=0, found=false, items=[]) %}{% for m in messages %}"
     "{% if m.role == 'user' %}{% set ns.count = ns.count + 1 %}{% set ns.found = true %}{% endif %}{% endfor %}"
     "{{ ns.count }} {{ ns.found }} {{ ns.items }}", {"messages": PEOPLE}),
    ("scope/set_tuple_and_block", "{% set a, b = 1, 'two' %}{{ a }}{{ b }}{% set block %}x{{ a }}y{% endset %}[{{ block }}]", {}),
    ("scope/reassign_variable", "{% set messages = messages[1:] %}{{ messages | length }}", {"messages": PEOPLE}),
    ("macro/defaults_and_keywords", "{% macro greet(name, greeting='Hello', punct='!') %}{{ greeting }}, {{ name }}"
     "{{ punct }}{% endmacro %}{{ greet('Ann') }}|{{ greet('Bob', 'Hi') }}|{{ greet('Cy', punct='?') }}|"
     "{{ greet(greeting='Yo', name='Di') }}", {}),
    ("macro/recursion_and_globals", "{% macro show(v) %}{% if v is mapping %}{{ '{' }}{% for k, x in v.items() %}"
     "{{ k }}:{{ show(x) }}{% endfor %}{{ '}' }}{% elif v is string %}'{{ v }}'{% else %}{{ v }}{% endif %}"
     "{% endmacro %}{% set suffix = '.' %}{% macro end() %}{{ suffix }}{% endmacro %}{{ show(d) }}{{ end() }}",
     {"d": {"a": {"b": 1, "c": "s"}}}),
    ("macro/missing_argument_is_undefined", "{% macro m(a, b) %}[{{ a }}][{{ b }}][{{ b is defined }}]{% endmacro %}{{ m(1) }}", {}),
    ("generation_block", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
     "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}",
     {"messages": [{"role": "user", "content": "Q "}, {"role": "assistant", "content": "A"}]}),
    # filters
    ("filters/strings", "[{{ '  x y  ' | trim }}][{{ 'xxhixx' | trim('x') }}][{{ 'MiXed' | upper }}][{{ 'MiXed' | lower }}]"
     "[{{ \"they're bill's o-k\" | title }}][{{ 'hELLO world' | capitalize }}][{{ 'a-b-a' | replace('a', 'x') }}]"
     "[{{ 'aaa' | replace('a', 'b', 2) }}][{{ 42 | string }}][{{ [1, 'a'] | string }}][{{ none | string }}]", {}),
    ("filters/length_first_last", "{{ [1, 2, 3] | length }} {{ 'héllo' | length }} {{ {'a': 1} | count }} "
     "{{ [4, 5] | first }} {{ [4, 5] | last }} {{ 'abc' | first }} {{ 'abc' | last }} {{ missing | length }}", {}),
    ("filters/join", "{{ ['a', 'b'] | join }} {{ ['a', 'b'] | join(', ') }} {{ [1, none, true] | join('-') }} "
     "{{ people | join(', ', attribute='name') }}", {"people": PEOPLE}),
    ("filters/numbers", "{{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ 3.9 | int }} "
     "{{ '2.5' | float }} {{ 'y' | float }} {{ 3 | float }} {{ true | int }} {{ -4 | abs }} {{ ' 12 ' | int }}", {}),
    ("filters/list_reverse_unique", "{{ 'abc' | list }} {{ {'a': 1, 'b': 2} | list }} {{ [1, 2, 3] | reverse | list }} "
     "{{ 'abc' | reverse }} {{ ['a', 'A', 'b', 'a'] | unique | list }} {{ ['a', 'A'] | unique(true) | list }}", {}),
    ("filters/select_reject", "{{ people | selectattr('role', 'equalto', 'user') | map(attribute='name') | list }} "
     "{{ people | rejectattr('role', 'equalto', 'user') | map(attribute='name') | join }} "
     "{{ people | selectattr('score') | map(attribute='name') | list }} "
     "{{ people | selectattr('score', 'undefined') | map(attribute='name') | list }} "
     "{{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('even') | list }} "
     "{{ ['a', 'b', 'c'] | reject('in', ['b']) | list }} {{ [1, 2] | select('equalto', 2) | list }} "
     "{{ people | map(attribute='score', default=0) | list }} {{ ['a', 'b'] | map('upper') | list }}",
     {"people": PEOPLE}),
    ("filters/items", "{% for k, v in d | items %}{{ k }}:{{ v }} {% endfor %}{{ d | items | list }}",
     {"d": {"x": 1, "y": [2]}}),
    ("filters/tojson", "{{ d | tojson }}\n{{ d | tojson(indent=2) }}\n{{ d | tojson(indent=0) }}\n"
     "{{ d | tojson(sort_keys=true) }}\n{{ d | tojson(separators=(',', ':')) }}\n{{ 'é\"<>&\\'\\n\\t\\u0001' | tojson }}\n"
     "{{ [] | tojson(indent=4) }}{{ {} | tojson(indent=4) }}{{ none | tojson }}{{ 1.0 | tojson }}{{ ('a', 1) | tojson }}\n"
     "{{ 'é😀' | tojson(true) }}\n{{ d | tojson(indent='--') }}",
     {"d": {"b": [1, 2.5, None, True, False], "a": {"nested": "ü\u2028"}, "empty": {}, "emptylist": [], "big": 12345678901234}}),
    ("filters/indent", "[{{ 'a\\nb\\n\\nc' | indent }}][{{ 'a\\nb' | indent(2, true) }}][{{ 'a\\n\\nb' | indent(2, blank=true) }}]"
     "[{{ 'x\\r\\ny' | indent('> ') }}]", {}),
    ("filters/safe_escape", "{{ '<b>' | safe }} {{ '<a href=\"x\">&\\'' | escape }} {{ 'x' | e }}", {}),
    # tests
    ("tests/types", "{% for v in [none, true, 0, 1.5, 'a', [1], {'k': 1}, missing] %}"
     "{{ v is none }}{{ v is boolean }}{{ v is true }}{{ v is false }}{{ v is integer }}{{ v is float }}{{ v is number }}"
     "{{ v is string }}{{ v is mapping }}{{ v is iterable }}{{ v is sequence }}{{ v is defined }};{% endfor %}", {}),
    ("tests/values", "{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }} "
     "{{ 'a' is equalto 'a' }} {{ 2 is eq 2 }} {{ 3 is ne 2 }} {{ 3 is gt 2 }} {{ 3 is lt 2 }} {{ 3 is ge 3 }} {{ 2 is le 1 }}"
     " {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ 2 is in [1, 2] }} {{ x is not none }} {{ x is not defined }} "
     "{{ none is sameas none }}", {"x": None}),
    # methods
    ("methods/strip_split", "[{{ '  a  '.strip() }}][{{ '\\n\\na\\n'.lstrip('\\n') }}][{{ 'xxa'.lstrip('x') }}]"
     "[{{ 'ayy'.rstrip('y') }}][{{ 'a b  c '.split() }}][{{ 'a,b,,c'.split(',') }}][{{ 'a,b,c'.split(',', 1) }}]"
     "[{{ 'a<think>b</think>c'.split('</think>')[-1] }}][{{ 'a b c'.rsplit(' ', 1) }}][{{ ''.split() }}]"
     "[{{ 'l1\\nl2\\r\\nl3'.splitlines() }}]", {}),
    ("methods/case_and_search", "{{ 'hello world'.title() }} {{ \"they're\".title() }} {{ 'hELLO'.capitalize() }} "
     "{{ 'Ab'.upper() }}{{ 'Ab'.lower() }} {{ 'hello'.startswith('he') }} {{ 'hello'.startswith(('x', 'h')) }} "
     "{{ 'hello'.endswith('lo') }} {{ 'hello'.find('l') }} {{ 'hello'.find('z') }} {{ 'hello'.rfind('l') }} "
     "{{ 'hello'.count('l') }} {{ 'a-b'.replace('-', '+') }} {{ ', '.join(['x', 'y']) }} {{ 'abc'.index('c') }}", {}),
    ("methods/dict", "{{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }} {{ d.get('a') }} "
     "{{ d.get('z', 0) }} {{ 'a' in d.keys() }}", {"d": {"a": 1, "b": "two"}}),
    ("functions/range_namespace_dict", "{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(5, 0, -2) | list }} "
     "{{ dict(a=1, b='x') }} {% set ns = namespace(a=1) %}{% set ns.b = ns.a + 1 %}{{ ns.b }}", {}),
    ("functions/strftime_now", "{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B %d, %Y %H:%M:%S %A %a %j %m %y %I %p %%') }}", {}),
    # more corners
    ("ws/more_corners", "{%- if true %}a{% endif -%}\n\n  b\n{{- 'c' }}\n  {{ 'd' -}}  \n  {%- raw %} r {% endraw -%}\n"
     "\t  {#- c -#}\t\n  {% if true %}  e  {% endif %}  \n{% if true -%}\n\n{%- endif %}|{% if true +%}\n{% endif %}|"
     "{% set x %}\n  block\n{% endset %}[{{ x }}]", {}),
    ("ws/content_keeps_carriage_returns", "{{ text }}|{{ text | trim }}", {"text": "a\r\nb\r"}),
    ("undefined/filters", "[{{ missing | trim }}][{{ missing | length }}][{{ missing | list }}][{{ missing | join(',') }}]"
     "[{{ missing | first }}][{{ missing | string }}][{{ missing | upper }}][{{ missing | items | list }}]"
     "[{{ missing | default(1) + 1 }}][{{ missing | reverse | list }}][{{ none.x }}][{{ 'abc'.nope }}]"
     "[{{ [1, 2] | join(',', attribute='x') }}][{{ ns.missing }}]", {"ns": None}),
    ("numbers/corners", "{{ -0.0 }} {{ 1e300 * 1e300 }} {{ -(1e300 * 1e300) }} {{ 0.1 * 3 }} {{ 100000000000000000.0 }} "
     "{{ 1000000000000000.0 }} {{ 123456789012345678 }} {{ 2 ** 62 }} {{ 5 / 2 * 2 }} {{ 7 // 2.0 }} {{ -7.5 // 2 }} "
     "{{ 7 % -3 }} {{ -7.5 % 2 }} {{ 0.0001 }} {{ 0.00001234 }} {{ 1.0e-10 }} {{ 3.14159e5 }} {{ 2.5e-3 * 4 }} {{ 1 / 7 }}", {}),
    ("logic/more", "{{ true and 'x' }}|{{ [] or {} }}|{{ 'a' < 'B' }}|{{ 'é' > 'z' }}|{{ 1 < 2 < 3 }}|{{ 1 < 3 > 2 }}|"
     "{{ 3 > 2 == true }}|{{ 'abc' in ['abc'] }}|{{ none in [none] }}|{{ 'ab' ~ none }}|{{ not none is none }}|"
     "{{ (1 if true else 2) + 1 }}|{{ 1 if false else 2 if false else 3 }}", {}),
    ("literals/more", "{{ [1, 2,] }} {{ {'a': 1,} }} {{ '\\101\\x41\\u0041' }} {{ \"it's\" }} {{ {'k': [1, (2, 3)]} }} "
     "{{ namespace(a=1, b='x') }}", {}),
    ("statements/unknown_filter_in_untaken_branch", "{% if false %}{{ 1 | nofilter }}{% endif %}"
     "{{ 'kept' if true else 2 | nofilter }}", {}),
    ("statements/more", "{% with a = 1, b = 'x' %}{{ a }}{{ b }}{% endwith %}[{{ a }}]{% filter upper %}abc{{ 'd' }}{% endfilter %}"
     "{% set y | upper %}xyz{% endset %}{{ y }}{% for a, b in d %}{{ a }}-{{ b }}{% endfor %}"
     "{% for k, v in d.items() %}{{ loop.index }}/{{ loop.length }}{{ k }}{{ v }}{% endfor %}{% print 'p' %}",
     {"d": {"ab": 1, "cd": 2}}),
    ("methods/lists_and_nested", "{{ l.count(1) }} {{ l.index(2) }} {{ messages[0].content[0].text }} {{ messages[0]['content'][-1]['type'] }}"
     " {{ 'a b'.split(' ')[-1] | upper }} {{ ('x', 'y').index('y') }}",
     {"l": [1, 2, 1], "messages": [{"content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]}),
    ("loop/else_after_break_or_continue", "{% for x in [1, 2] %}{% break %}{% else %}else-after-break{% endfor %}|"
     "{% for x in [1, 2] %}{% continue %}{% else %}else-after-continue{% endfor %}|"
     "{% for x in [1, 2] %}{% if x == 2 %}{% continue %}{% endif %}{% else %}no-else{% endfor %}|"
     "{% for x in [] %}{% else %}{% set inner = 1 %}{% endfor %}{{ inner is defined }}", {}),
    ("filters/generators", "{% set users = messages | selectattr('role', 'equalto', 'nobody') %}{{ 'truthy' if users }}|"
     "{% set roles = messages | map(attribute='role') %}{{ roles | list }}{{ roles | list }}|{{ none | select | list }}|"
     "{{ 0 | map('upper') | list }}|{{ (messages | reverse | first).role }}|{{ messages | reverse | list | length }}|"
     "{{ 5 | items is defined }}|{{ missing is callable }}", {"messages": PEOPLE}),
    ("macro/caller_scope", "{% macro show() %}[{{ item }}|{{ top }}]{% endmacro %}{% set top = 'T' %}"
     "{% for item in [1] %}{{ show() }}{% endfor %}", {"item": "global"}),
    # errors (the fixture records jinja2's message; the C# error must contain it)
    ("errors/raise_exception", "a{{ raise_exception('Custom message: \"' ~ who ~ '\"') }}b", {"who": "me"}),
    ("errors/attribute_of_undefined", "{{ missing.attr }}", {}),
    ("errors/missing_key_then_attribute", "{{ d.a.b }}", {"d": {}}),
    ("errors/concatenate_str_and_int", "{{ 'a' + 1 }}", {}),
    ("errors/macro_too_many_arguments", "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", {}),
    ("errors/macro_unknown_keyword", "{% macro m(a) %}{% endmacro %}{{ m(b=2) }}", {}),
    ("errors/call_undefined", "{{ nothing(1) }}", {}),
    ("errors/unpack", "{% for a, b in [[1]] %}{% endfor %}", {}),
    ("errors/odd_undefined", "{{ missing is odd }}", {}),
    ("errors/compare_int_str", "{{ 1 < 'a' }}", {}),
    ("errors/no_element", "{{ [1][5].x }}", {}),
    ("errors/division_by_zero", "{{ 1 / 0 }}", {}),
    ("errors/attribute_of_none_attribute", "{{ none.x.y }}", {}),
    ("errors/items_of_list", "{{ [1] | items | list }}", {}),
    ("errors/tojson_undefined", "{{ missing | tojson }}", {}),
    ("errors/set_on_non_namespace", "{% set d = {} %}{% set d.x = 1 %}", {}),
    ("errors/length_of_generator", "{{ messages | selectattr('role') | length }}", {"messages": PEOPLE}),
    ("errors/unknown_filter_in_taken_branch", "{% if true %}{{ 1 | nofilter }}{% endif %}", {}),
    ("errors/join_non_strings", "{{ ', '.join([1, 2]) }}", {}),
]


# ---------------------------------------------------------------------------------------------------------------
def render_case(name, template_key, text, variables):
    case = {"name": name, "template": template_key, "variables": variables}
    try:
        case["expected"] = ENV.from_string(text).render(**variables)
        if GENERATION_TAG.search(text):
            case["generation"] = generation_spans(text, variables)
    except Exception as error:  # the C# interpreter must fail too, with this message in its own
        case["error"] = str(error)
    return case


def main():
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    output = os.path.join(root, "tests", "OrtLora.Tests", "Data", "chat_templates.json")
    templates = {name: dict(info) for name, info in TEMPLATES.items()}
    cases = [render_case(name, name.split("/")[0], text, variables) for name, text, variables in chat_cases()]
    for name, text, variables in LANGUAGE:
        key = "language/" + name
        templates[key] = {"model": None, "source": "written for this fixture", "template": text}
        cases.append(render_case(key, key, text, variables))
    fixture = {
        "generator": "tools/chat-templates/render.py with jinja2 " + jinja2.__version__,
        "now": FIXED_NOW.isoformat(),
        "templates": templates,
        "cases": cases,
    }
    with open(output, "w", encoding="utf-8", newline="\n") as file:
        json.dump(fixture, file, ensure_ascii=False, indent=1)
        file.write("\n")
    errors = sum(1 for case in cases if "error" in case)
    print(f"wrote {len(cases)} cases ({errors} expect an error) from {len(templates)} templates to {output}")


if __name__ == "__main__":
    sys.exit(main())
