"""Built-in sample texts for comparing tokenizers, one per kind of text, written for this project.

``SAMPLES`` maps a kind (english, python, chinese, russian, arabic, hindi) to a few paragraphs;
``EXAMPLES`` maps each kind to one sentence taken from its sample, whose token split the
comparison report shows. These are small and fixed so numbers stay comparable between runs; they
are no benchmark of a language, just enough text to see how a vocabulary treats each script.
"""
from __future__ import annotations

ENGLISH = """\
The old lighthouse keeper climbed the stairs every evening at dusk, counting the steps out of habit \
rather than need. There were one hundred and twelve of them, worn smooth in the middle by a century \
of boots, and he knew which ones creaked in winter.

From the lamp room he could see the whole bay: the fishing boats returning in a loose line, the \
ferry cutting its white wake toward the mainland, and the gulls settling on the breakwater as the \
wind dropped. He wrote the weather in a small notebook, though nobody had asked him to for years.

When the light finally turned, sweeping its long arm across the water, he made a cup of tea and sat \
by the window. Some nights nothing happened at all, and those were the nights he liked best.
"""

PYTHON = '''\
from dataclasses import dataclass, field


@dataclass
class Inventory:
    """Counts items by name and refuses to go below zero."""

    items: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, count: int = 1) -> None:
        if count <= 0:
            raise ValueError(f"count must be positive, got {count}")
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name: str, count: int = 1) -> int:
        have = self.items.get(name, 0)
        if have < count:
            raise KeyError(f"only {have} of {name!r} left, cannot remove {count}")
        self.items[name] = have - count
        return self.items[name]


def total(inventory: Inventory) -> int:
    return sum(inventory.items.values())
'''

CHINESE = """\
清晨的小镇还很安静，面包店的灯却已经亮了。老板每天四点起床，把面团揉好，再放进温暖的角落里慢慢发酵。\
等到街上的第一辆公交车开过，新鲜的面包正好出炉。

附近的学生喜欢在上学路上买一个热乎乎的豆沙包。他们一边走一边聊昨天的作业，偶尔为一道数学题争得面红耳赤。\
老板听见了，总是笑着说：慢点吃，别烫着。

下午店里人少，他会坐在门口看报纸，顺便和路过的邻居打招呼。这样的日子平平淡淡，可他觉得很踏实。
"""

RUSSIAN = """\
Поезд опоздал на сорок минут, и на платформе уже собралась толпа встречающих. Одни нервно \
поглядывали на часы, другие спокойно пили чай из термоса и обсуждали погоду.

Наконец вдали показались огни локомотива. Девочка в красной шапке первой заметила их и громко \
закричала, что бабушка приехала. Мама улыбнулась и взяла её за руку, чтобы она не побежала к краю.

Когда двери открылись, пассажиры высыпали на перрон с чемоданами, сумками и коробками. Бабушка \
вышла последней, держа в руках банку варенья, которую везла через всю страну.
"""

ARABIC = """\
في صباح يوم الجمعة ذهبت العائلة إلى السوق القديم لشراء الخضار والفواكه. كانت الشوارع مزدحمة \
بالناس، ورائحة الخبز الطازج تملأ المكان.

توقف الأب عند بائع التمر وسأله عن أنواعه وأسعاره، بينما اختارت الأم بعض الطماطم والخيار. \
أما الأطفال فقد انشغلوا بمشاهدة رجل يصنع الحلوى أمام دكانه الصغير.

وفي طريق العودة جلسوا في مقهى قريب، وشربوا الشاي بالنعناع وتحدثوا عن خططهم لعطلة الصيف.
"""

HINDI = """\
गाँव के किनारे एक छोटा सा तालाब था, जहाँ शाम को बच्चे खेलने आते थे। कोई पत्थर फेंककर लहरें \
गिनता, तो कोई किनारे बैठकर मछलियों को दाना डालता।

एक दिन बारिश के बाद तालाब में पानी बहुत बढ़ गया। बुज़ुर्गों ने बच्चों को पास न जाने की सलाह दी, \
लेकिन वे दूर से ही इंद्रधनुष को देखकर खुश हो गए।

रात को दादी ने सबको पुरानी कहानियाँ सुनाईं, और बाहर मेंढकों की आवाज़ देर तक आती रही।
"""

SAMPLES: dict[str, str] = {
    "english": ENGLISH, "python": PYTHON, "chinese": CHINESE,
    "russian": RUSSIAN, "arabic": ARABIC, "hindi": HINDI,
}

EXAMPLES: dict[str, str] = {
    "english": ("There were one hundred and twelve of them, worn smooth in the middle by a century of boots, "
                "and he knew which ones creaked in winter."),
    "python": "        self.items[name] = self.items.get(name, 0) + count",
    "chinese": "附近的学生喜欢在上学路上买一个热乎乎的豆沙包。",
    "russian": "Наконец вдали показались огни локомотива.",
    "arabic": "كانت الشوارع مزدحمة بالناس، ورائحة الخبز الطازج تملأ المكان.",
    "hindi": "एक दिन बारिश के बाद तालाब में पानी बहुत बढ़ गया।",
}
