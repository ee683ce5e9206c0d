#!/usr/bin/env python3
"""make_vocab.py — regenerates builder/vocab.txt, the sticker-phrase vocabulary of the demo
data generator (DESIGN §5).

A few hundred hand-written base phrases, grouped by how they inflect in chat (states take
好X / 太X了, actions take 去X / 不想X, interjections take particles and repetition), are
expanded into natural variants. Each phrase gets a commonness score from its base's place in
its list and the variant's penalty; the two languages are sorted by score separately and then
interleaved so every prefix of the ranking is ~15% English. The output is deterministic.

    python3 builder/tools/make_vocab.py > builder/vocab.txt
"""
import sys
import zlib
from math import log

TARGET_TOTAL = 3600
ENGLISH_SHARE = 0.15

# ---------------------------------------------------------------------------------------------
# Chinese bases. Within each list, most common first.

# The core: the phrases every sticker pack has, in rough order of use.
CORE = """
哈哈哈 好累 加油 晚安 好的 收到 无语 谢谢 抱抱 在吗 笑死 救命 生气了 开心 早安 么么哒
谢谢老板 裂开 摸鱼 打工人 我太难了 冲鸭 好的呢 吃了吗 绝绝子 芭比Q了 委屈 害羞 哭了 尴尬
呜呜呜 嘿嘿 嘻嘻 好困 好饿 爱你 想你 亲亲 拜拜 你好 辛苦了 对不起 没关系 不客气 好嘞 嗯嗯
哼 真香 冲冲冲 干饭 干饭人 躺平 摆烂 社死 破防了 好家伙 我不听 不要 可以 行吧 好吧 算了
随便 都行 懂了 明白 知道了 好的老板 来了 马上 等等 稍等 哇 哇塞 天哪 我的天 厉害了 牛啊 666
点赞 棒棒哒 优秀 可爱 好可爱 心动 比心 害怕 慌了 吓死我了 惊呆了 震惊 疑惑 问号 啥 什么鬼
真的吗 不会吧 就这 你礼貌吗 栓Q 我谢谢你 真的会谢 蚌埠住了 绷不住了 泰裤辣 遥遥领先 吃瓜 坐等
围观 溜了 跑路 告辞 再见 明天见 下次一定 安排 稳了 赢麻了 上岸 暴富 发财 恭喜发财 红包拿来
"""

# States and feelings: take 好X, 太X了, 有点X, X死了 ...
ADJ = """
累 困 饿 开心 难过 烦 无聊 可爱 冷 热 忙 穷 懒 帅 美 丑 胖 慌 气 怕 尴尬 委屈 生气 伤心
害羞 感动 激动 紧张 郁闷 崩溃 孤单 寂寞 幸福 快乐 兴奋 满足 舒服 难受 惨 酷 甜 香 棒 厉害
优秀 聪明 笨 傻 呆 菜 强 稳 疼 饱 渴 晕 急 丧 爽 暖 乖 萌 凶 无助 迷茫 心累 头疼 焦虑 emo
开森 失落 烦躁 绝望 后悔 羡慕 嫉妒 心疼 想哭 好奇 安心 放心 佛系 刺激 离谱 上头 头大 无奈
失眠 社恐 emo了 躁动 丢人 纠结 痛苦 温柔 可怜 无敌 快乐 不爽 心塞 想睡 饿扁 困死 冤 憋屈
"""

# Adjectives that read naturally with 死了 / 哭了.
ADJ_SI = set("累 困 饿 开心 烦 无聊 可爱 冷 热 忙 穷 帅 美 丑 气 怕 尴尬 委屈 生气 伤心 害羞 感动 "
             "激动 紧张 郁闷 难受 甜 香 疼 饱 渴 急 爽 萌 心疼 羡慕 嫉妒 离谱 后悔 丢人".split())

# Complete interjections and replies: take particles, ！ and (when short) repetition.
INTERJ = """
好滴 哦哦 啊啊啊 呵呵 切 略略略 嘤嘤嘤 奥利给 加油鸭 吃瓜群众 内卷 卷起来 不卷了 芜湖 起飞 芜湖起飞
好耶 耶 完美 漂亮 牛 绝了 妙啊 高 实在是高 有道理 说得对 对对对 是是是 行行行 好好好 没问题
搞定 完成 打卡 报到 签到 来啦 我来了 到了 出发 走起 走你 冲 上 开冲 干杯 碰杯 生日快乐 新年快乐
节日快乐 中秋快乐 周末快乐 早上好 中午好 下午好 晚上好 晚安好梦 做个好梦 早点睡 早点休息 多喝热水
注意身体 照顾好自己 辛苦啦 麻烦了 打扰了 抱歉 我错了 原谅我 求放过 饶了我吧 救救孩子 救救我
扎心了 心碎 心态崩了 自闭了 我裂开了 人麻了 我哭死 泪目 感动哭了 笑出声 笑不活了 笑到打鸣 哈哈
嘎嘎 嘻嘻嘻 嘿嘿嘿 呜呜 呜呜呜呜 嗯 嗯呢 好哒 好叭 好滴呢 收到收到 okk 欧克 没毛病 稳住 别慌
淡定 冷静 深呼吸 算你狠 服了 我服了 佩服 大佬 膜拜 学到了 涨知识了 受教了 懂了懂了 原来如此 有点东西
离谱 太离谱了 离大谱 无语子 无语死了 无言以对 沉默 省略号 发呆 在线等 急急急 速来 快来 来嘛 等你
想你了 爱你哟 爱了爱了 mua 啵啵 贴贴 摸摸头 举高高 蹭蹭 揉揉 拍拍 戳戳 敲打 打你 揍你 哼唧
收 好的好的 来了来了 知道啦 晓得了 了解 明白了 好呀 可以呀 行 成 妥了 安排上了 约吗 走吗 冲吗
"""

# Questions: take ？, ？？ and 呀.
QUESTION = """
在吗 吃了吗 睡了吗 在干嘛 干嘛呢 人呢 你是谁 为什么 怎么了 你说呢 可以吗 好不好 行不行 有事吗
几点了 你猜 去哪 想我了吗 你在哪 怎么办 咋了 什么情况 你确定 认真的吗 凭什么 谁懂啊 有人吗
睡了没 下班了吗 出来玩吗 今晚吃什么 吃什么 喝什么 去哪玩 几点下班 还在吗 忙吗 醒了吗 到家了吗
你呢 然后呢 所以呢 是吗 真的假的 你再说一遍 我不配吗 谁啊 在哪里 怎么说 啥意思 懂吗 听到了吗
"""

# Actions: take 去X, 想X, 不想X, 一起X吧 ...
ACTION = """
睡觉 吃饭 上班 下班 加班 打游戏 喝奶茶 减肥 学习 工作 出去玩 逛街 回家 洗澡 起床 追剧 看电影
跑步 健身 放假 旅游 购物 喝酒 熬夜 做饭 写作业 开会 搬砖 约饭 剁手 吃火锅 吃烧烤 喝咖啡 唱歌
跳舞 蹦迪 上课 考试 复习 晒太阳 点外卖 请假 辞职 涨工资 发工资 抢红包 发红包 打麻将 开黑 上分
刷手机 看书 散步 遛狗 撸猫 吃零食 喝水 休息 躺着 午睡 赖床 化妆 拍照 自拍 出差 搬家 装修 买菜
"""

# Memes and fixed slang: few variants.
MEME = """
yyds绝绝子 集美 家人们 老铁 老铁666 扎心了老铁 我酸了 柠檬精 真是栓Q 鸡你太美 你干嘛 哎哟
我直接好家伙 硬控 显眼包 尊嘟假嘟 偷感 班味 city不city 松弛感 情绪价值 发疯文学 精神状态良好
已读不回 已读乱回 听劝 谁懂 破大防 哈基米 狠狠爱住 爱住了 我嗑到了 磕到了 好甜 上头了 下头
心动了 怦然心动 小丑竟是我自己 我是小丑 打工魂 搞钱 只想搞钱 拿捏 拿捏了 狠狠拿捏 格局 格局打开
格局小了 你品 你细品 针不戳 蓝瘦香菇 我太南了 皮一下 皮皮虾 我们走 大可不必 不愧是你 妈耶 我去
"""

# People: combined with a few greetings.
PEOPLE = "老板 宝宝 亲 大佬 姐妹 兄弟 家人们 老铁 各位 大家 亲爱的 宝 老公 老婆 同学".split()
PEOPLE_TEMPLATES = [
    ("谢谢{}", 0.8), ("{}辛苦了", 1.4), ("{}晚安", 1.2), ("{}早安", 1.6), ("{}加油", 1.4),
    ("爱你{}", 1.8), ("{}好", 1.6), ("{}救命", 2.2), ("{}我错了", 2.4), ("{}冲鸭", 2.4),
]

# ---------------------------------------------------------------------------------------------
# English bases.

EN_CORE = """
thumbs up|good night|lol|omg|thank you|ok|miss you|love you|on my way|haha|good morning|yes|no
|thanks|bye|hi|hello|hey|wow|yay|oops|hahaha|lmao|nope|sure|why|what|really|nice|cool|cheers
|congrats|happy birthday|good job|well done|see you|see you soon|brb|idk|no way|no problem
|you got this|let's go|come on|hurry up|i'm fine|i'm home|i'm back|calm down|take care
|sweet dreams|hugs|good luck|my bad|whatever|seriously|awkward|facepalm|same|mood|bruh|yikes|hmm
|ugh|meh|oh no|oh well|of course|got it|noted|roger that|deal|all good|no worries|party time
|weekend vibes|coffee time|let's eat|feed me|help|help me|save me|send help|call me|wait for me
|where are you|what's up|how are you|good afternoon|happy new year|merry christmas|tgif|yummy
|love it|i love you|gn|gm|ty|thx|kk|xoxo|mind blown|big mood|bless you|good vibes|slay|vibes
|yes please|no thanks|not today|i'm done|im dead|so true|for real|literally me|it's fine|hell yeah
|here we go|game over|you're welcome|happy friday|happy weekend|monday again|work mode|nap time
|bedtime|hungry|sleepy|tired|bored|busy|sorry|happy|sad|angry|cute|shy|cold|hot|broke|lazy|proud
|scared|stressed|sick|full|excited|confused|lonely|awesome|amazing|perfect|great|fine|hype
"""

EN_ADJ = ("tired sleepy hungry happy sad bored busy cute angry sorry excited confused lonely cold hot "
          "broke lazy proud scared shy stressed sick full cool good done awesome amazing jealous "
          "grumpy cozy chill blessed").split()
EN_ADJ_TEMPLATES = [
    ("so {}", 0.6), ("i'm {}", 1.0), ("too {}", 1.6), ("{} af", 1.8), ("so so {}", 2.2),
    ("feeling {}", 2.0), ("i'm so {}", 1.8), ("very {}", 2.4), ("{}!", 2.2),
]

# ---------------------------------------------------------------------------------------------

def words(s):
    return s.split()


def jitter(p):
    """A small deterministic per-phrase offset so ranks do not look machine-regular."""
    return (zlib.crc32(p.encode()) % 1000) / 1000.0 * 0.35


def cn_variants_adj(x):
    out = []
    one = len(x) == 1
    out.append(("好" + x, 0.0 if one else 0.5))
    out.append((x, 1.8 if one else 0.0))
    out.append(("太" + x + "了", 1.2))
    out.append(("好" + x + "啊", 1.7))
    out.append(("真的好" + x, 2.2))
    out.append(("有点" + x, 2.4))
    out.append(("超" + x, 2.5))
    out.append(("我好" + x, 2.4))
    out.append(("好" + x + "呀", 2.9))
    out.append(("太" + x + "啦", 3.2))
    out.append(("好" + x + "哦", 3.4))
    out.append(("巨" + x, 4.1))
    out.append(("我太" + x + "了", 3.4))
    out.append(("今天好" + x, 3.7))
    out.append(("好" + x + "！", 3.6))
    if not one:
        out.append(("超级" + x, 3.2))
        out.append(("真的" + x, 3.1))
    if x in ADJ_SI:
        out.append((x + "死了", 1.9))
        out.append(("要" + x + "死了", 3.9))
        if one:
            out.append((x + "哭了", 4.2))
    if not x.endswith("了"):
        out.append((x + "了", 1.6 if not one else 1.2))
    return out


def cn_variants_interj(x):
    out = [(x, 0.0)]
    out.append((x + "！", 2.0))
    if not x.endswith(("啊", "呀", "啦", "吧", "哦", "了", "呢")):
        out.append((x + "啊", 2.7))
        out.append((x + "呀", 3.2))
        out.append((x + "啦", 3.6))
        out.append((x + "哦", 3.9))
    out.append((x + "~", 3.7))
    out.append((x + "！！", 4.1))
    if len(x) <= 2 and x[0] != x[-1]:
        out.append((x + x, 2.5))
    return out


def cn_variants_question(x):
    return [(x, 0.0), (x + "？", 1.5), (x + "？？", 3.1), (x + "？？？", 4.4),
            ((x + "呀") if not x.endswith("吗") else ("你" + x), 3.7)]


def cn_variants_action(x):
    out = [(x, 0.0), ("去" + x, 1.7), ("想" + x, 1.9), ("不想" + x, 2.0), ("要" + x + "了", 2.4),
           ("在" + x, 2.7), (x + "去了", 3.2), ("一起" + x + "吧", 3.4), ("快去" + x, 3.9),
           (x + "了", 2.2), ("我去" + x + "了", 3.7), ("准备" + x, 4.2), ("该" + x + "了", 4.1),
           ("继续" + x, 4.4), ("好想" + x, 2.9)]
    return out


def cn_variants_meme(x):
    out = [(x, 0.0), (x + "！", 2.7), ("真的" + x, 3.7)]
    if not x.endswith("了"):
        out.append((x + "了", 3.2))
    return out


def en_variants(x):
    out = [(x, 0.0), (x + "!", 2.5), (x + "!!", 3.7), (x + "~", 4.4)]
    if x.endswith(" you"):
        out.append((x[:-4] + " u", 1.5))
        out.append((x + " so much", 2.7))
        out.append((x + " too", 3.2))
    if x in ("lol", "haha", "hahaha", "omg", "lmao", "wow", "yay", "bruh", "ugh", "hmm"):
        out.append((x + " " + x, 3.4))
    if " " not in x and len(x) <= 5 and x.isalpha():
        out.append((x + " lol", 4.1))
    return out


def build():
    cn = {}
    en = {}

    def add(d, phrase, score):
        phrase = phrase.strip()
        if not phrase:
            return
        score += jitter(phrase) + 0.12 * max(0, len(phrase) - (6 if phrase.isascii() else 2))
        if phrase not in d or d[phrase] > score:
            d[phrase] = score

    # Core phrases: their list position is their commonness.
    for p, x in enumerate(words(CORE)):
        base = log(1 + p)
        for v, pen in cn_variants_interj(x) if not x.endswith(("吗", "？")) else cn_variants_question(x):
            add(cn, v, base + pen)
    # Each category starts a little below the core and spreads by its own scale.
    for start, scale, lst, fn in ((4, 1.5, ADJ, cn_variants_adj),
                                  (40, 3.0, INTERJ, cn_variants_interj),
                                  (30, 3.0, QUESTION, cn_variants_question),
                                  (40, 2.5, ACTION, cn_variants_action),
                                  (80, 4.0, MEME, cn_variants_meme)):
        for p, x in enumerate(words(lst)):
            base = log(start + p * scale)
            for v, pen in fn(x):
                add(cn, v, base + pen)
    # Repetitions of laughter and crying.
    for ch, start, pen0 in (("哈", 2, 0.5), ("呜", 2, 1.5), ("嘿", 2, 2.0), ("嘻", 2, 2.0),
                            ("啊", 3, 1.8), ("嗯", 2, 2.2), ("嘤", 3, 3.0), ("呵", 2, 2.4)):
        for n in range(start, 9):
            add(cn, ch * n, log(4) + pen0 + abs(n - 3) * 0.8)
    for p, who in enumerate(PEOPLE):
        for t, pen in PEOPLE_TEMPLATES:
            add(cn, t.format(who), log(30 + 6 * p) + pen)

    for p, x in enumerate(w.strip() for w in EN_CORE.split("|")):
        if x:
            for v, pen in en_variants(x):
                add(en, v, log(1 + p) + pen)
    for p, x in enumerate(EN_ADJ):
        for t, pen in EN_ADJ_TEMPLATES:
            add(en, t.format(x), log(10 + 2 * p) + pen * 1.5)

    # A phrase is English iff it is pure ASCII; keep the languages disjoint.
    for d, want_ascii in ((cn, False), (en, True)):
        for k in list(d):
            if k.isascii() != want_ascii:
                v = d.pop(k)
                (en if k.isascii() else cn).setdefault(k, v)

    cn_sorted = sorted(cn, key=lambda k: (cn[k], len(k), k))
    en_sorted = sorted(en, key=lambda k: (en[k], len(k), k))
    n_en = min(len(en_sorted), round(TARGET_TOTAL * ENGLISH_SHARE))
    n_cn = min(len(cn_sorted), TARGET_TOTAL - n_en)
    cn_sorted, en_sorted = cn_sorted[:n_cn], en_sorted[:n_en]

    # Interleave: English at ranks where the running English share drops below the target.
    out, i, j = [], 0, 0
    share = n_en / (n_en + n_cn)
    while i < len(cn_sorted) or j < len(en_sorted):
        r = len(out)
        want_en = j < len(en_sorted) and (i >= len(cn_sorted) or (r >= 4 and j < share * (r + 1)))
        if want_en:
            out.append(en_sorted[j]); j += 1
        else:
            out.append(cn_sorted[i]); i += 1
    return out, len(cn), len(en)


def main():
    out, ncn, nen = build()
    assert len(out) == len(set(out))
    for p in out:
        assert "\n" not in p and "\t" not in p and not p.startswith("#")
    sys.stdout.write(
        "# builder/vocab.txt: sticker phrases for the demo data generator (DESIGN §5).\n"
        "# One phrase a line, UTF-8, most common first; the generator draws ranks Zipf-like.\n"
        "# ~15% English (pure ASCII lines), the rest Chinese chat phrases and their variants.\n"
        "# Generated by builder/tools/make_vocab.py; edit that script, not this file.\n")
    for p in out:
        sys.stdout.write(p + "\n")
    print(f"{len(out)} phrases ({sum(p.isascii() for p in out)} English) from "
          f"{ncn} Chinese / {nen} English candidates", file=sys.stderr)


if __name__ == "__main__":
    main()
