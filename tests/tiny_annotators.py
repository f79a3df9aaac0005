"""Tiny annotator models of the real architectures, with seeded random weights, saved the way users'
checkpoints are (folders and files that each annotator's ``load`` reads). Shared by the annotator,
pipeline and evaluation tests; their outputs are noise, never a result."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

# --- captioner: LLaVA-NeXT (CLIP vision + Llama with grouped-query attention) ---------------------
PINPOINTS = [[32, 64], [64, 32], [64, 64]]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[INST] {% for c in m['content'] %}{% if c['type'] == 'image' %}"
            "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]{% endfor %}")
WORDS = ("a the dog cat sky tree red blue green on in of with and is near under person car house grass water "
         "CAPTION: ENTITIES: , .").split()


def build_tiny_llava_next(folder):
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor, PreTrainedTokenizerFast)

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", "<image>", "[INST]", "[/INST]"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", extra_special_tokens=["<image>"])
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                              image_grid_pinpoints=PINPOINTS)
    LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8, chat_template=TEMPLATE,
                       vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(folder)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=8, projection_dim=32),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=len(vocab), max_position_embeddings=512,
                                bos_token_id=1, eos_token_id=2, pad_token_id=3),
        image_token_index=vocab["<image>"], image_grid_pinpoints=PINPOINTS, image_seq_length=16)
    torch.manual_seed(0)
    LlavaNextForConditionalGeneration(config).eval().save_pretrained(folder)


# --- depth: Depth-Anything-V2 (DINOv2 + DPT) ------------------------------------------------------
def save_tiny_depth_anything(folder, seed=0):
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                              fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
    torch.manual_seed(seed)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(folder)
    return folder


# --- segmenter: Grounding DINO / OWLv2 boxes + SAM masks ------------------------------------------
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Forced detections: random detectors score near chance, so thresholds of 0 keep every query.
OPEN = dict(box_threshold=0.0, text_threshold=0.0, score_threshold=0.0, max_instances=6, batch_size=4)

def tiny_sam() -> Sam:
    return Sam(
        image_encoder=ImageEncoderViT(img_size=64, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
                                      out_chans=32, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                      use_rel_pos=True, window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(64, 64),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=32, iou_head_depth=2, iou_head_hidden_dim=16,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2)),
    )


def save_tiny_grounding_dino(folder):
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    # The model splits phrases at bert-base-uncased's ids for [CLS] [SEP] . ? (101, 102, 1012, 1029).
    vocab = [f"[unused{i}]" for i in range(1100)]
    specials = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}
    for i, t in specials.items():
        vocab[i] = t
    for i, t in enumerate([*LETTERS, *(f"##{c}" for c in LETTERS)]):
        vocab[200 + i] = t
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    torch.manual_seed(0)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                   out_indices=[2, 3, 4]),
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=30, num_feature_levels=3,
        encoder_n_points=1, decoder_n_points=1)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def save_tiny_owlv2(folder):
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    vocab = {"!": 0}
    for t in [*LETTERS, *(f"{c}</w>" for c in LETTERS), "<|startoftext|>", "<|endoftext|>"]:
        vocab[t] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    config = Owlv2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=16)
    model = Owlv2ForObjectDetection(config)
    with torch.no_grad():  # random box heads saturate to degenerate boxes; keep them near the patch priors
        model.box_head.dense2.weight.mul_(0.01)
    model.save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                   tokenizer=tokenizer).save_pretrained(folder)


# --- pose: YOLOv8 person boxes -> ViTPose keypoints ---------------------------------------------------
POSE_CROP = (64, 48)  # ViTPose input (height, width)


def save_tiny_vitpose(folder, seed: int = 0):
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    backbone = VitPoseBackboneConfig(image_size=list(POSE_CROP), patch_size=[16, 16], hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, out_indices=[2])
    torch.manual_seed(seed)
    cfg = VitPoseConfig(backbone_config=backbone, use_simple_decoder=True, num_labels=17)
    VitPoseForPoseEstimation(cfg).save_pretrained(folder)
    return folder


def save_tiny_yolo(path):
    from onegen.annotators.yolo import import_ultralytics

    torch.manual_seed(0)
    yolo = import_ultralytics().YOLO("yolov8n.yaml")  # the real YOLOv8 architecture, random weights, built offline
    # a random detector sees no one; raise its person logit so the full path has persons to pose
    for branch in yolo.model.model[-1].cv3:
        branch[-1].bias.data[0] = 6.0
    yolo.save(str(path))
    return path
